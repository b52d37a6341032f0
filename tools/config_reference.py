"""Render the config reference (every table, key, default and help text) from the dataclasses.

    python -m tools.config_reference           # print it
    python -m tools.config_reference --write   # refresh the section in README.md
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

from titan_spec.config.schema import TABLES

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _table(name: str, cls) -> list[str]:
    lines = [f"**[{name}]**", "", "| key | default | meaning |", "| --- | --- | --- |"]
    nested = []
    for f in fields(cls):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            nested.append((f"{name}.{f.name}", f.default_factory))
            continue
        help_text = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{_default(f)}` | {help_text} |")
    lines.append("")
    for sub_name, sub_cls in nested:
        lines += _table(sub_name, sub_cls)
    return lines


def render() -> str:
    lines = []
    for table, cls in TABLES.items():
        lines += _table(table, cls)
    return "\n".join(lines).rstrip() + "\n"


def write(readme: Path) -> None:
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{render()}{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write(Path(__file__).resolve().parents[1] / "README.md")
    else:
        print(render())
