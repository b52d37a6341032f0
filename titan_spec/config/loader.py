"""Strict TOML loader: unknown keys, wrong types and impossible values raise ConfigError naming
the key, the file and a fix. CLI overrides `--section.key=value` win over the file."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import tomli

from .schema import TABLES, JobConfig
from .validate import KIND_TABLES, ConfigError, check_kind_tables, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "train_configs"


# Keys that moved (old dotted key -> where it lives now); a config still using one gets told.
RENAMED = {
    "task.min_digits": "task.arithmetic.min_digits",
    "task.max_digits": "task.arithmetic.max_digits",
    "task.min_items": "task.countdown.min_items (or task.sorting.min_items)",
    "task.max_items": "task.countdown.max_items (or task.sorting.max_items)",
    "task.path": "task.jsonl.path",
    "task.on_bad_line": "task.jsonl.on_bad_line",
    "drafter.warmup_steps": "drafter.distill_steps",
    "drafter.draft_flavor": "drafter.draft_model.flavor",
    "drafter.draft_layers": "drafter.draft_model.layers",
    "drafter.num_heads": "drafter.mtp.num_heads",
    "rl.max_policy_lag": "async_rl.max_policy_lag",
    "rl.is_cap": "async_rl.is_cap",
    "rl.stale_policy": "async_rl.stale_batches",
    "rl.inflight_weight_updates": "async_rl.inflight_weight_updates",
    "parallelism.rollout": "[async_rl] rollout_ranks / rollout_tp",
    "parallelism.rollout.ranks": "async_rl.rollout_ranks",
    "parallelism.rollout.tp": "async_rl.rollout_tp",
}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid: {', '.join(sorted(options))}."


def resolve_config_path(name: str) -> Path:
    """A path as given, or else NAME (with or without .toml) inside train_configs/."""
    path = Path(name)
    if path.is_file():
        return path
    stem = name if name.endswith(".toml") else name + ".toml"
    candidate = CONFIG_DIR / stem
    if candidate.is_file():
        return candidate
    known = sorted(p.name for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(
        f"config '{name}' not found as a path nor in {CONFIG_DIR}.{_suggest(stem, known)}"
    )


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value, annotation, where: str):
    """Check (and widen int->float) a TOML value against a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        (item_type, *_rest) = typing.get_args(annotation) or (typing.Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}.")
        return [_coerce(v, item_type, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}.")
    if annotation is typing.Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is type(None) and value is None:
        return value
    if isinstance(annotation, type) and isinstance(value, annotation):
        if annotation is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got boolean {value!r}.")
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}.")


def _apply_table(obj, table: dict, table_name: str, source: str) -> None:
    types_by_name = _field_types(type(obj))
    meta = {f.name: f.metadata for f in fields(obj)}
    for key, value in table.items():
        where = f"[{table_name}].{key} in {source}"
        if key not in types_by_name and f"{table_name}.{key}" in RENAMED:
            raise ConfigError(f"[{table_name}].{key} in {source} has moved: it is now "
                              f"{RENAMED[f'{table_name}.{key}']}.")
        if key not in types_by_name:
            raise ConfigError(
                f"unknown key [{table_name}].{key} in {source}.{_suggest(key, types_by_name)}"
            )
        if is_dataclass(types_by_name[key]):  # a sub-table such as [parallelism.rollout]
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table ([{table_name}.{key}]).")
            _apply_table(getattr(obj, key), value, f"{table_name}.{key}", source)
            continue
        value = _coerce(value, types_by_name[key], where)
        choices = meta[key].get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}.")
        setattr(obj, key, value)


def apply_dict(cfg: JobConfig, data: dict, source: str) -> JobConfig:
    for table_name, table in data.items():
        if table_name not in TABLES:
            hint = _suggest(table_name, TABLES)
            raise ConfigError(f"unknown table [{table_name}] in {source}.{hint}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{table_name}] in {source} must be a table, got {table!r}.")
        _apply_table(getattr(cfg, table_name), table, table_name, source)
    return cfg


def _parse_cli_value(raw: str):
    try:
        return tomli.loads(f"v = {raw}")["v"]
    except tomli.TOMLDecodeError:
        return raw  # a bare string such as --job.name=run1


def parse_overrides(args: list[str]) -> dict:
    """['--section.key=value', '--section.key', 'value', ...] -> nested dict."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"command-line argument '{arg}' is not of the form --section.key=value "
                "(e.g. --training.seq_len=256)."
            )
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command-line option '{arg}' needs a value.")
            key, raw = arg[2:], args[i + 1]
            i += 2
        *tables, name = key.split(".")
        target = out
        for table in tables:  # --task.jsonl.path=x -> nested tables
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise ConfigError(f"command-line option '--{key}' sets a table and a value.")
        target[name] = _parse_cli_value(raw)
    return out


def _dotted_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) \
            else {prefix + key}
    return keys


def load_config(name: str | None, overrides: list[str] | tuple = ()) -> JobConfig:
    cfg, set_keys = JobConfig(), {}
    if name:
        path = resolve_config_path(name)
        try:
            data = tomli.loads(path.read_text())
        except tomli.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        apply_dict(cfg, data, str(path))
        set_keys[str(path)] = _dotted_keys(data)
    cli = parse_overrides(list(overrides))
    apply_dict(cfg, cli, "the command line")
    set_keys["the command line"] = _dotted_keys(cli)
    check_kind_tables(cfg, set_keys)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    return cfg


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml_table(name: str, values: dict) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    lines.append("")
    for key, sub in values.items():
        if isinstance(sub, dict):
            lines += _toml_table(f"{name}.{key}", sub)
    return lines


def to_toml(cfg: JobConfig) -> str:
    """The resolved config as TOML; of the per-kind sub-tables only the chosen kind's."""
    lines, data = [], to_dict(cfg)
    for table, choice in KIND_TABLES:
        chosen = data[table][choice]
        data[table] = {k: v for k, v in data[table].items()
                       if not isinstance(v, dict) or k == chosen}
    for table, values in data.items():
        lines += _toml_table(table, values)
    return "\n".join(lines)

