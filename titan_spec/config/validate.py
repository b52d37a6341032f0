"""Every value check of a config that needs no knowledge of the world size (those are in
titan_spec/preflight.py), one function per table, plus the rule that a per-kind sub-table must
belong to the chosen kind."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a config file or on the command line."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        table, _, name = key.rpartition(".")
        raise ConfigError(f"[{table}].{name}: {message}")


def validate(cfg) -> None:
    for check in (_training, _parallelism, _job, _task, _sft_rl, _async, _rollout, _drafter,
                  _optimizer, _rest):
        check(cfg)


def _training(cfg) -> None:
    t = cfg.training
    _check(t.global_batch_size > 0, "training.global_batch_size", "must be > 0.")
    _check(t.grad_accum_steps > 0, "training.grad_accum_steps", "must be > 0.")
    _check(t.seq_len > 1, "training.seq_len", "must be > 1.")
    _check(t.max_grad_norm >= 0, "training.max_grad_norm", "must be >= 0 (0 disables clipping).")
    _check(t.threads_per_rank >= 1, "training.threads_per_rank", "must be >= 1.")


def _parallelism(cfg) -> None:
    p = cfg.parallelism
    for key in ("dp_replicate", "tp", "ep"):
        _check(getattr(p, key) >= 1, f"parallelism.{key}", "must be >= 1.")
    _check(p.dp_shard == -1 or p.dp_shard >= 1, "parallelism.dp_shard",
           "must be -1 (auto) or >= 1.")


def _job(cfg) -> None:
    _check(cfg.job.world_size >= 0, "job.world_size", "must be >= 0 (0: the launcher's NPROC).")
    _check(cfg.job.device_memory_gib > 0, "job.device_memory_gib", "must be > 0.")


def _task(cfg) -> None:
    arithmetic = cfg.task.arithmetic
    _check(1 <= arithmetic.min_digits <= arithmetic.max_digits, "task.arithmetic.min_digits",
           f"need 1 <= min_digits ({arithmetic.min_digits}) <= max_digits "
           f"({arithmetic.max_digits}).")
    for name in ("countdown", "sorting"):
        items = getattr(cfg.task, name)
        _check(1 <= items.min_items <= items.max_items, f"task.{name}.min_items",
               f"need 1 <= min_items ({items.min_items}) <= max_items ({items.max_items}).")
    _check(cfg.task.name != "jsonl" or bool(cfg.task.jsonl.path), "task.jsonl.path",
           "task.name=jsonl needs [task.jsonl] path=<file.jsonl>.")
    _check(0 <= cfg.task.jsonl.heldout_fraction < 1, "task.jsonl.heldout_fraction",
           "must be in [0, 1).")


def _sft_rl(cfg) -> None:
    s, r = cfg.sft, cfg.rl
    _check(s.steps >= 0, "sft.steps", "must be >= 0.")
    _check(s.eval_problems >= 0, "sft.eval_problems", "must be >= 0 (0 disables).")
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
    _check(r.rollout_is_cap >= 1, "rl.rollout_is_cap", "must be >= 1 (weights above it are "
           "truncated or masked).")
    _check(0 < r.rollout_is_floor <= 1, "rl.rollout_is_floor", "must be in (0, 1] (ratios "
           "below it are masked under rl.rollout_is = mis).")
    if r.steps:
        _check(cfg.rollout.temperature > 0, "rollout.temperature", "0 makes every sample of a "
               "group identical (no advantage signal); RL needs temperature > 0.")
        _check(r.kl_coef == 0 or cfg.parallelism.tp == 1, "rl.kl_coef", "> 0 keeps a full "
               "reference copy, not supported with parallelism.tp > 1 yet; set rl.kl_coef=0 "
               "or tp=1.")


def _async(cfg) -> None:
    a = cfg.async_rl
    _check(a.rollout_ranks >= 0, "async_rl.rollout_ranks", "must be >= 0 (0: colocated).")
    _check(a.rollout_tp >= 1, "async_rl.rollout_tp", "must be >= 1.")
    _check(a.max_policy_lag >= 0, "async_rl.max_policy_lag", "must be >= 0.")
    _check(a.is_cap >= 1, "async_rl.is_cap", "must be >= 1 (weights above it are truncated).")
    if not a.rollout_ranks:
        _check(a.stale_batches == "wait" and not a.inflight_weight_updates,
               "async_rl.stale_batches", "stale_batches=drop and inflight_weight_updates apply "
               "to async RL only: set async_rl.rollout_ranks > 0, or drop them.")
        return
    if cfg.job.dry_run:  # a plan of the layout only
        return
    _check(cfg.rl.steps > 0, "rl.steps", "async RL needs rl.steps > 0 (the rollout ranks only "
           "serve RL).")
    _check(cfg.rl.minibatches == 1, "rl.minibatches", "async RL versions the policy once per "
           "step: set rl.minibatches=1.")
    _check(not (cfg.drafter.adaptive and a.rollout_tp > 1), "drafter.adaptive",
           "needs async_rl.rollout_tp=1 (tensor-parallel peers would choose different k).")
    _check(not a.inflight_weight_updates or a.stale_batches == "drop",
           "async_rl.inflight_weight_updates", "needs async_rl.stale_batches=drop (under wait "
           "the schedule fixes the version of every batch).")


def _rollout(cfg) -> None:
    ro = cfg.rollout
    _check(ro.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1.")
    _check(ro.temperature >= 0, "rollout.temperature", "must be >= 0 (0 is greedy).")
    _check(0 < ro.top_p <= 1, "rollout.top_p", "must be in (0, 1].")
    _check(ro.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables).")
    _check(ro.max_batch_size >= 1, "rollout.max_batch_size", "must be >= 1.")


def _drafter(cfg) -> None:
    d = cfg.drafter
    _check(d.num_draft_tokens >= 0, "drafter.num_draft_tokens", "must be >= 0.")
    _check(d.distill_steps >= 0, "drafter.distill_steps", "must be >= 0.")
    _check(d.lr > 0, "drafter.lr", "must be > 0.")
    _check(d.max_grad_norm >= 0, "drafter.max_grad_norm", "must be >= 0 (0 disables).")
    _check(0 <= d.collapse_threshold < 1, "drafter.collapse_threshold", "must be in [0, 1).")
    _check(0 <= d.confidence_threshold < 1, "drafter.confidence_threshold",
           "must be in [0, 1) (0: draft every position).")
    _check(d.mtp.num_heads >= 1, "drafter.mtp.num_heads", "must be >= 1.")
    _check(d.eagle3.ttt_steps >= 1, "drafter.eagle3.ttt_steps", "must be >= 1 (1: no TTT).")
    _check(d.eagle3.draft_vocab_size >= 0, "drafter.eagle3.draft_vocab_size",
           "must be >= 0 (0: the whole vocabulary).")
    _check(aux_layers_valid(d.eagle3.aux_layers), "drafter.eagle3.aux_layers",
           f"{d.eagle3.aux_layers!r} is not three distinct comma-separated layer indices "
           "(e.g. '1,13,24'), nor empty (the public recipe's).")
    _check(d.draft_model.layers >= 0, "drafter.draft_model.layers",
           "must be >= 0 (0: the flavor's own).")
    _check(not (d.adaptive and cfg.parallelism.tp > 1), "drafter.adaptive",
           "needs parallelism.tp=1: tensor-parallel ranks must take identical decode steps, "
           "and adaptive k follows each rank's own timings. Set drafter.adaptive=false.")


def _optimizer(cfg) -> None:
    o, lr = cfg.optimizer, cfg.lr_scheduler
    _check(o.lr > 0, "optimizer.lr", "must be > 0.")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optimizer.beta1", "betas must be in [0, 1).")
    _check(o.eps > 0, "optimizer.eps", "must be > 0.")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0.")
    _check(lr.warmup_steps >= 0, "lr_scheduler.warmup_steps", "must be >= 0.")
    _check(0 <= lr.min_lr_ratio <= 1, "lr_scheduler.min_lr_ratio", "must be in [0, 1].")


def _rest(cfg) -> None:
    c = cfg.checkpoint
    _check(c.interval > 0, "checkpoint.interval", "must be > 0.")
    _check(c.keep_latest_k >= 0, "checkpoint.keep_latest_k", "must be >= 0 (0 keeps all).")
    _check(cfg.metrics.log_freq > 0, "metrics.log_freq", "must be > 0.")
    _check(c.export_shard_mib > 0, "checkpoint.export_shard_mib", "must be > 0.")
    _check(c.preempt_grace_s > 0, "checkpoint.preempt_grace_s", "must be > 0 seconds.")
    _check(cfg.comm.timeout_s > 0, "comm.timeout_s", "must be > 0 seconds.")
    _quantize(cfg)
    _check(not (c.initial_load_path and c.initial_load_format == "hf"
                and cfg.model.tokenizer == "char"), "model.tokenizer",
           "is 'char' but checkpoint.initial_load_path is a Hugging Face model, whose ids are "
           "its own tokenizer's; use model.tokenizer=auto (the folder's tokenizer) or a path.")


# (table, the field choosing the kind): their sub-tables are per kind.
KIND_TABLES = (("task", "name"), ("drafter", "kind"))


def check_kind_tables(cfg, set_keys: dict[str, set[str]]) -> None:
    """A sub-table of [task] / [drafter] must belong to the chosen kind. set_keys: source ->
    dotted keys it set. A file's sub-table for another kind is left alone when the command line
    changed the kind (the file's tables describe its own choice); anything else is an error."""
    cli = set_keys.get("the command line", set())
    for table, choice in KIND_TABLES:
        chosen = getattr(getattr(cfg, table), choice)
        for source, keys in set_keys.items():
            if source != "the command line" and f"{table}.{choice}" in cli:
                continue
            for key in sorted(keys):
                parts = key.split(".")
                if len(parts) == 3 and parts[0] == table and parts[1] != chosen:
                    raise ConfigError(
                        f"[{table}.{parts[1]}].{parts[2]} in {source} applies to "
                        f"{table}.{choice}={parts[1]}, but {table}.{choice}={chosen}; drop it "
                        f"or set {table}.{choice}={parts[1]}.")


def parse_aux_layers(text: str) -> tuple[int, ...] | None:
    """'1,13,24' -> (1, 13, 24); '' -> None (the public recipe's layers); ValueError for
    anything but three distinct comma-separated layer indices."""
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or len(set(parts)) != 3:
        raise ValueError(f"{text!r} is not three distinct comma-separated layer indices")
    return tuple(int(p) for p in parts)


def aux_layers_valid(text: str) -> bool:
    try:
        parse_aux_layers(text)
    except ValueError:
        return False
    return True


def _quantize(cfg) -> None:
    q = cfg.quantize
    _check(q.verifier_recipe == "rowwise", "quantize.verifier_recipe", "tensorwise scales make "
           "a row's verifier probabilities depend on the other rows and drafts of the batch, so "
           "speculative sampling would no longer be exact; use rowwise.")
    if q.backend == "none":
        return
    _check(cfg.parallelism.tp == 1, "quantize.backend", "emulated FP8 does not compose with "
           "DTensor tensor parallelism yet; set parallelism.tp=1 or quantize.backend=none.")
    _check(cfg.async_rl.rollout_tp == 1, "quantize.backend", "emulated FP8 is not applied to a "
           "tensor-parallel rollout replica's row-parallel layers; set async_rl.rollout_tp=1 or "
           "quantize.backend=none.")
