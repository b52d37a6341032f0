"""The one way a config field is declared: its default and its help text (and allowed values)."""

from __future__ import annotations

from dataclasses import field


def opt(default, help: str, choices: tuple | None = None):
    """A config field with its help text (and optional allowed values)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)
