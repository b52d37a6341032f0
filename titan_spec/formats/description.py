"""model.json: what a checkpoint folder holds, so a tool can read it without the job's config:
the model family and shape, and the drafter's kind (and shape, for a draft model). Written
into our DCP step folders by every save and into every folder the conversion tool writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from titan_spec.models import get_model_spec

DESCRIPTION = "model.json"


def describe(model_name: str, args, drafter_kind: str | None = None,
             drafter_args=None) -> dict:
    drafter = None
    if drafter_kind is not None:
        drafter = {"kind": drafter_kind,
                   "args": asdict(drafter_args) if drafter_args is not None else None}
    return {"format": "titan-spec", "model": model_name, "args": asdict(args),
            "drafter": drafter}


def write_description(folder: Path, description: dict) -> None:
    (Path(folder) / DESCRIPTION).write_text(json.dumps(description, indent=1))


def read_description(folder: Path) -> dict | None:
    path = Path(folder) / DESCRIPTION
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None


def args_of(model_name: str, fields: dict):
    """Model args from their model.json form."""
    any_flavor = next(iter(get_model_spec(model_name).flavors.values()))
    return any_flavor.with_overrides(**fields)
