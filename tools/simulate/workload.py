"""One RL step's workload: the model shape and layout (from a job config) and what the config
cannot say (prompt and response lengths, acceptance), with every field settable by `--set`."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields, replace

from titan_spec.models.qwen3.args import Qwen3Args

DRAFTERS = ("none", "ngram", "draft_model", "eagle", "eagle3", "mtp")
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "float8": 1.0}


@dataclass(frozen=True)
class Workload:
    model: Qwen3Args
    model_name: str = "?"  # model.flavor, for the report
    dtype_bytes: float = 2.0  # weights, activations and KV cache (rollout and learner)
    gpus: int = 8  # devices of the whole job
    mode: str = "sync"  # sync (every device generates, then trains) or async (two meshes)
    rollout_gpus: int = 0  # async: devices of the rollout mesh (the rest train)
    rollout_tp: int = 1  # devices per rollout replica
    prompts_per_step: int = 32
    group_size: int = 8
    prompt_len: float = 256.0  # mean prompt tokens (not in a config: a dataset property)
    response_mean: float = 0.0  # mean response tokens; 0: max_new_tokens / 4
    response_sigma: float = 0.6  # log-normal shape of the response lengths (the long tail)
    response_max: int = 1024  # max_new_tokens
    max_batch_size: int = 64  # decode slots per rollout replica
    kv_memory_fraction: float = 0.9  # of memory for weights + KV cache (gpu_memory_utilization)
    drafter: str = "eagle"  # none, ngram, draft_model, eagle, eagle3, mtp
    k: int = 4  # draft tokens per iteration
    acceptance_length: float = 0.0  # mean tokens per iteration; 0: from `acceptance`
    acceptance: float = 0.7  # per-position acceptance rate, used when acceptance_length = 0
    draft_layers: int = 1  # decoder layers of the drafter (draft_model: its own)
    draft_dim: int = 0  # hidden size of a draft_model (0: the target's)
    draft_vocab: int = 0  # eagle3's reduced vocabulary (0: the target's)
    online_drafter: bool = True  # the drafter trains on every step's rollouts
    policy_lag: int = 1  # async: versions a rollout may lag the learner
    activation_checkpoint: bool = False  # the learner recomputes activations in backward
    # Calibration from a measured plain run (0: not given): generation is scaled so the
    # simulated plain step matches it; logprob / train / the rest are taken as measured.
    measured_generation_s: float = 0.0
    measured_logprob_s: float = 0.0
    measured_train_s: float = 0.0
    measured_step_s: float = 0.0

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def mean_response(self) -> float:
        return self.response_mean or self.response_max / 4.0

    @property
    def accept_length(self) -> float:
        if self.acceptance_length:
            return min(self.acceptance_length, self.k + 1.0)
        rate, total, kept = self.acceptance, 1.0, 1.0
        for _ in range(self.k):
            kept *= rate
            total += kept
        return total

    def per_position_acceptance(self) -> list[float]:
        """Probability that draft position i (1-based) is accepted, geometric in the position
        with the rate that gives accept_length."""
        rate = solve_rate(self.accept_length, self.k)
        return [rate ** i for i in range(1, self.k + 1)]

    def speculative(self) -> bool:
        return self.drafter != "none" and self.k > 0

    def plain(self) -> "Workload":
        return replace(self, drafter="none", k=0)


def solve_rate(accept_length: float, k: int) -> float:
    """The per-position rate r with 1 + r + ... + r^k = accept_length (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if sum(mid ** i for i in range(k + 1)) < accept_length:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def settable() -> dict[str, type]:
    """Every --set key of the workload (model shape keys included) with its type."""
    keys = {f.name: f.type for f in fields(Workload) if f.name not in ("model", "model_name")}
    keys.update({f.name: f.type for f in fields(Qwen3Args) if f.name != "attention_fp64"})
    return keys


def coerce(key: str, raw: str, kind) -> object:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={raw}: expected true or false.")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"--set {key}={raw}: expected a{'n' if kind is int else ''} "
                         f"{kind.__name__}.") from None


def unknown_key(key: str, valid) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(f"--set {key}: not a workload or hardware setting.{hint} "
                      f"`python -m tools.simulate --list` prints them all.")


def with_sets(work: Workload, sets: dict) -> Workload:
    model_keys = {f.name for f in fields(Qwen3Args)}
    model_sets = {k: v for k, v in sets.items() if k in model_keys}
    rest = {k: v for k, v in sets.items() if k not in model_keys}
    model = work.model.with_overrides(**model_sets) if model_sets else work.model
    out = dataclasses.replace(work, model=model, **rest)
    if out.mode not in ("sync", "async"):
        raise ValueError(f"--set mode={out.mode}: expected sync or async.")
    if out.drafter not in DRAFTERS:
        raise ValueError(f"--set drafter={out.drafter}: expected one of {', '.join(DRAFTERS)}.")
    _check_ranges(out)
    if out.mode == "async" and out.rollout_gpus >= out.gpus:
        raise ValueError(f"rollout_gpus = {out.rollout_gpus} leaves no learner device of "
                         f"gpus = {out.gpus}; 0 picks the split.")
    return out


# Settings that must be at least 1, positive, or a fraction in (0, 1].
_AT_LEAST_ONE = ("gpus", "rollout_tp", "prompts_per_step", "group_size", "response_max",
                 "max_batch_size", "n_layers", "n_heads", "n_kv_heads", "head_dim", "dim",
                 "vocab_size")
_POSITIVE = ("dtype_bytes", "prompt_len", "hidden_dim")
_FRACTIONS = ("kv_memory_fraction",)


def _check_ranges(work: Workload) -> None:
    values = {**dataclasses.asdict(work.model), **dataclasses.asdict(work)}
    for key in _AT_LEAST_ONE:
        if not values[key] >= 1:
            raise ValueError(f"{key} = {values[key]} must be at least 1.")
    for key in _POSITIVE:
        if not values[key] > 0:
            raise ValueError(f"{key} = {values[key]} must be positive.")
    for key in _FRACTIONS:
        if not 0 < values[key] <= 1:
            raise ValueError(f"{key} = {values[key]} must be in (0, 1].")
    if not (work.response_mean == 0 or work.response_mean >= 1) or not work.response_sigma >= 0:
        raise ValueError(f"response_mean = {work.response_mean} (0 or >= 1) and response_sigma "
                         f"= {work.response_sigma} (>= 0) are out of range.")
    if not (work.acceptance_length == 0 or work.acceptance_length >= 1):
        raise ValueError(f"acceptance_length = {work.acceptance_length}: a mean of tokens per "
                         f"iteration, at least 1 (0: from acceptance).")
    if not 0 <= work.acceptance <= 1 or work.k < 0 or work.policy_lag < 0:
        raise ValueError(f"acceptance = {work.acceptance} must be in [0, 1], k = {work.k} and "
                         f"policy_lag = {work.policy_lag} at least 0.")
    if work.model.num_experts and not 1 <= work.model.top_k <= work.model.num_experts:
        raise ValueError(f"top_k = {work.model.top_k} must be in [1, num_experts = "
                         f"{work.model.num_experts}].")


def from_config(cfg, gpus: int) -> Workload:
    """The workload a job config describes (shape from model.flavor or the HF folder)."""
    from titan_spec.formats.initial_load import model_args

    args = model_args(cfg)
    drafter = cfg.drafter
    async_mode = cfg.async_rl.rollout_ranks > 0
    draft_layers, draft_dim = 1, 0
    if drafter.kind == "draft_model":
        from titan_spec.models.registry import get_model_spec

        draft_args = get_model_spec(cfg.model.name).args(drafter.draft_model.flavor)
        draft_layers = drafter.draft_model.layers or draft_args.n_layers
        draft_dim = draft_args.dim
    return Workload(
        model=args, model_name=cfg.model.flavor, gpus=gpus,
        dtype_bytes=DTYPE_BYTES[cfg.parallelism.param_dtype],
        mode="async" if async_mode else "sync",
        rollout_gpus=cfg.async_rl.rollout_ranks,
        rollout_tp=cfg.async_rl.rollout_tp if async_mode else cfg.parallelism.tp,
        prompts_per_step=cfg.rl.prompts_per_step, group_size=cfg.rl.group_size,
        response_max=cfg.rollout.max_new_tokens, max_batch_size=cfg.rollout.max_batch_size,
        drafter=drafter.kind, k=0 if drafter.kind == "none" else drafter.num_draft_tokens,
        draft_layers=draft_layers, draft_dim=draft_dim,
        draft_vocab=cfg.drafter.eagle3.draft_vocab_size, online_drafter=drafter.online,
        policy_lag=cfg.async_rl.max_policy_lag,
        activation_checkpoint=cfg.parallelism.activation_checkpoint == "full")
