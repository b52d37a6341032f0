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

CONFIG_DIR = Path(__file__).resolve().parents[2] / "train_configs"


class ConfigError(ValueError):
    """A user mistake in a config file or on the command line."""


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
        for table in tables:  # --parallelism.rollout.ranks=2 -> nested tables
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise ConfigError(f"command-line option '--{key}' sets a table and a value.")
        target[name] = _parse_cli_value(raw)
    return out


def load_config(name: str | None, overrides: list[str] | tuple = ()) -> JobConfig:
    cfg = JobConfig()
    if name:
        path = resolve_config_path(name)
        try:
            data = tomli.loads(path.read_text())
        except tomli.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        apply_dict(cfg, data, str(path))
    apply_dict(cfg, parse_overrides(list(overrides)), "the command line")
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"[{key.split('.')[0]}].{key.split('.', 1)[1]}: {message}")


def validate(cfg: JobConfig) -> None:
    """Value checks that need no knowledge of the world size."""
    t, p, s = cfg.training, cfg.parallelism, cfg.sft
    _check(t.global_batch_size > 0, "training.global_batch_size", "must be > 0.")
    _check(t.grad_accum_steps > 0, "training.grad_accum_steps", "must be > 0.")
    _check(t.seq_len > 1, "training.seq_len", "must be > 1.")
    _check(t.max_grad_norm >= 0, "training.max_grad_norm", "must be >= 0 (0 disables clipping).")
    _check(t.threads_per_rank >= 1, "training.threads_per_rank", "must be >= 1.")
    for key in ("dp_replicate", "tp", "ep"):
        _check(getattr(p, key) >= 1, f"parallelism.{key}", "must be >= 1.")
    _check(p.dp_shard == -1 or p.dp_shard >= 1, "parallelism.dp_shard",
           "must be -1 (auto) or >= 1.")
    _check(p.rollout.ranks >= 0, "parallelism.rollout.ranks", "must be >= 0 (0: colocated).")
    _check(p.rollout.tp >= 1, "parallelism.rollout.tp", "must be >= 1.")
    _check(cfg.job.world_size >= 0, "job.world_size", "must be >= 0 (0: the launcher's NPROC).")
    _check(cfg.job.device_memory_gib > 0, "job.device_memory_gib", "must be > 0.")
    _check(s.steps >= 0, "sft.steps", "must be >= 0.")
    _check(s.eval_problems >= 0, "sft.eval_problems", "must be >= 0 (0 disables).")
    task = cfg.task
    _check(1 <= task.min_digits <= task.max_digits, "task.min_digits",
           f"need 1 <= min_digits ({task.min_digits}) <= max_digits ({task.max_digits}).")
    _check(1 <= task.min_items <= task.max_items, "task.min_items",
           f"need 1 <= min_items ({task.min_items}) <= max_items ({task.max_items}).")
    _check(task.name != "jsonl" or bool(task.path), "task.path",
           "task.name=jsonl needs task.path=<file.jsonl>.")
    _validate_rl(cfg)
    o = cfg.optimizer
    _check(o.lr > 0, "optimizer.lr", "must be > 0.")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optimizer.beta1", "betas must be in [0, 1).")
    _check(o.eps > 0, "optimizer.eps", "must be > 0.")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0.")
    lr = cfg.lr_scheduler
    _check(lr.warmup_steps >= 0, "lr_scheduler.warmup_steps", "must be >= 0.")
    _check(0 <= lr.min_lr_ratio <= 1, "lr_scheduler.min_lr_ratio", "must be in [0, 1].")
    c = cfg.checkpoint
    _check(c.interval > 0, "checkpoint.interval", "must be > 0.")
    _check(c.keep_latest_k >= 0, "checkpoint.keep_latest_k", "must be >= 0 (0 keeps all).")
    _check(cfg.metrics.log_freq > 0, "metrics.log_freq", "must be > 0.")


def _validate_rl(cfg: JobConfig) -> None:
    r, ro, d = cfg.rl, cfg.rollout, cfg.drafter
    _check(r.steps >= 0, "rl.steps", "must be >= 0 (0 runs SFT only).")
    _check(r.prompts_per_step > 0, "rl.prompts_per_step", "must be > 0.")
    _check(r.group_size >= 2, "rl.group_size",
           "must be >= 2: group-relative advantages need at least two samples per prompt.")
    _check(r.lr > 0, "rl.lr", "must be > 0.")
    _check(r.warmup_steps >= 0, "rl.warmup_steps", "must be >= 0.")
    _check(0 < r.clip_low < 1, "rl.clip_low", "must be in (0, 1).")
    _check(r.clip_high > 0, "rl.clip_high", "must be > 0.")
    _check(r.kl_coef >= 0, "rl.kl_coef", "must be >= 0.")
    _check(r.minibatches >= 1, "rl.minibatches", "must be >= 1.")
    _check(r.eval_problems >= 0, "rl.eval_problems", "must be >= 0 (0 disables).")
    _check(r.max_policy_lag >= 0, "rl.max_policy_lag", "must be >= 0.")
    _check(r.is_cap >= 1, "rl.is_cap", "must be >= 1 (weights above it are truncated).")
    _check(ro.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1.")
    _check(ro.temperature >= 0, "rollout.temperature", "must be >= 0 (0 is greedy).")
    _check(0 < ro.top_p <= 1, "rollout.top_p", "must be in (0, 1].")
    _check(ro.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables).")
    _check(ro.max_batch_size >= 1, "rollout.max_batch_size", "must be >= 1.")
    _check(d.num_draft_tokens >= 0, "drafter.num_draft_tokens", "must be >= 0.")
    _check(d.warmup_steps >= 0, "drafter.warmup_steps", "must be >= 0.")
    _check(d.lr > 0, "drafter.lr", "must be > 0.")
    _check(d.max_grad_norm >= 0, "drafter.max_grad_norm", "must be >= 0 (0 disables).")
    _check(0 <= d.collapse_threshold < 1, "drafter.collapse_threshold", "must be in [0, 1).")
    _check(d.num_heads >= 1, "drafter.num_heads", "must be >= 1.")
    _check(not (d.adaptive and cfg.parallelism.tp > 1), "drafter.adaptive",
           "needs parallelism.tp=1: tensor-parallel ranks must take identical decode steps, "
           "and adaptive k follows each rank's own timings. Set drafter.adaptive=false.")


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
    lines = []
    for table, values in to_dict(cfg).items():
        lines += _toml_table(table, values)
    return "\n".join(lines)

