"""Every check of a job that needs no process: degrees against the world size, the model's
shape against the degrees, batch divisibility, the async split. The launcher runs it before it
spawns workers (so a bad layout fails in a second), each worker again at start-up, and the dry
run before it plans memory."""

from __future__ import annotations

from titan_spec.formats.initial_load import check_initial_load, model_args, tokenizer_spec
from titan_spec.parallel.parallel_dims import ParallelDims
from titan_spec.parallel.rollout_layout import check_rollout_tp
from titan_spec.parallel.tensor_parallel import check_tp_divisibility
from titan_spec.runtime import uses_cuda


def preflight(cfg, world_size: int) -> ParallelDims:
    """Every check that needs no process: degrees vs world size, model shape vs degrees,
    batch divisibility. Run by the launcher before it spawns workers, and by each worker."""
    args = model_args(cfg)
    if cfg.model.attention_fp64 and uses_cuda(cfg.training):
        raise ValueError("model.attention_fp64 = true on CUDA selects the float64 math attention "
                         "kernel, in training too ([B, H, L, L] float64 per layer: out of memory "
                         "at real lengths); it is a CPU fp32 option: set "
                         "model.attention_fp64=false.")
    if cfg.checkpoint.initial_load_path:
        from titan_spec.data.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(tokenizer_spec(cfg), cfg.task.chat_template)
        check_initial_load(cfg, tokenizer.vocab_size)
    if cfg.async_rl.rollout_ranks:
        dims = _preflight_rollout_mesh(cfg, world_size, args)
    else:
        dims = ParallelDims.from_config(cfg.parallelism, world_size)
    if cfg.parallelism.param_dtype != "float32" and dims.dp == 1:
        raise ValueError(f"parallelism.param_dtype={cfg.parallelism.param_dtype} applies "
                         "through FSDP2's mixed precision, which a layout with one data-parallel "
                         "rank does not use (the run would stay float32); use >= 2 "
                         "data-parallel ranks, or param_dtype=float32 (autocast for one rank is "
                         "not built).")
    if dims.tp > 1:
        check_tp_divisibility(args, dims.tp)
    if dims.ep > 1 and (not args.is_moe or args.num_experts % dims.ep):
        raise ValueError(f"parallelism.ep={dims.ep} needs an MoE flavor whose num_experts it "
                         f"divides; {cfg.model.flavor} has {args.num_experts} experts.")
    for key in ("sft", "rl"):
        count = getattr(cfg, key).eval_problems
        if 0 < count < dims.dp:
            raise ValueError(f"{key}.eval_problems={count} is fewer than the {dims.dp} "
                             "data-parallel ranks that share them; use at least that many, or 0.")
    if cfg.rl.steps:
        _preflight_rl(cfg, dims, args)
    per_step = dims.dp * cfg.training.grad_accum_steps
    if cfg.sft.steps and cfg.training.global_batch_size % per_step:
        raise ValueError(
            f"training.global_batch_size={cfg.training.global_batch_size} must be divisible by "
            f"data-parallel degree {dims.dp} x grad_accum_steps {cfg.training.grad_accum_steps}"
            f" = {per_step}; e.g. use global_batch_size="
            f"{max(per_step, cfg.training.global_batch_size // per_step * per_step)}."
        )
    return dims


def split_world(cfg, world_size: int) -> tuple[ParallelDims, ParallelDims]:
    """(learner dims over the first ranks, rollout dims over the last async_rl.rollout_ranks);
    ValueError naming the fix when the split is impossible."""
    ranks, tp = cfg.async_rl.rollout_ranks, cfg.async_rl.rollout_tp
    if ranks >= world_size:
        raise ValueError(f"async_rl.rollout_ranks={ranks} leaves no learner rank in a world of "
                         f"{world_size}; launch more ranks or lower it.")
    if ranks % tp:
        raise ValueError(f"async_rl.rollout_tp={tp} must divide async_rl.rollout_ranks={ranks} "
                         "(rollout replicas = rollout_ranks / rollout_tp).")
    learner_world = world_size - ranks
    try:
        learner = ParallelDims.from_config(cfg.parallelism, learner_world)
    except ValueError as err:
        raise ValueError(f"with async_rl.rollout_ranks={ranks} the learner mesh has "
                         f"{learner_world} of the {world_size} ranks: {err}") from None
    return learner, ParallelDims(1, -1, tp, 1, ranks, first_rank=learner_world)


def _preflight_rollout_mesh(cfg, world_size: int, args) -> ParallelDims:
    """Checks of the async layout -> the learner's dims."""
    learner, _ = split_world(cfg, world_size)
    if cfg.async_rl.rollout_tp > 1:
        check_rollout_tp(args, cfg.async_rl.rollout_tp)
    return learner


def _preflight_rl(cfg, dims, args) -> None:
    rl, ranks = cfg.rl, cfg.async_rl.rollout_ranks
    generators = ranks // cfg.async_rl.rollout_tp if ranks else dims.dp
    if rl.prompts_per_step % generators:
        who = "rollout replicas" if ranks else "data-parallel ranks"
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} must be divisible by the "
                         f"{generators} {who} (each generates whole groups).")
    if ranks and rl.prompts_per_step % dims.dp:
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} must be divisible by the "
                         f"{dims.dp} learner data-parallel ranks (each trains on whole groups).")
    local = rl.prompts_per_step // dims.dp * rl.group_size
    if local % rl.minibatches:
        raise ValueError(f"each rank's {local} samples (rl.prompts_per_step / dp x group_size) "
                         f"must split into rl.minibatches={rl.minibatches} equal parts.")
    if cfg.rollout.max_new_tokens >= args.max_seq_len:
        raise ValueError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room "
                         f"for the prompt in the model's max_seq_len={args.max_seq_len}.")
    if cfg.drafter.kind == "eagle3":
        _preflight_eagle3(cfg.drafter, args)


def _preflight_eagle3(drafter, args) -> None:
    """The head's feature layers and draft vocabulary against the policy, or a published
    head's config.json against it (formats/eagle3_hf.py names what does not fit)."""
    from titan_spec.config.validate import parse_aux_layers
    from titan_spec.formats.eagle3_hf import head_spec, is_eagle3_folder
    from titan_spec.models.eagle3 import check_aux_layers

    if is_eagle3_folder(drafter.init_from):
        head_spec(drafter.init_from, args)
        return
    layers = parse_aux_layers(drafter.eagle3.aux_layers)  # its form is checked with the config
    if layers is not None:
        try:
            check_aux_layers(layers, args.n_layers)
        except ValueError as err:
            raise ValueError(f"drafter.eagle3.aux_layers: {err}") from None
    if drafter.eagle3.draft_vocab_size > args.vocab_size:
        raise ValueError(f"drafter.eagle3.draft_vocab_size={drafter.eagle3.draft_vocab_size} "
                         f"exceeds the policy's vocabulary ({args.vocab_size}).")
