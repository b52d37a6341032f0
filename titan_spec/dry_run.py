"""Dry run: the memory plan of a job too large for this machine.

Builds the model on the meta device, initialises a fake process group of the job's full world
size, applies the learner's real parallel plans (TP -> EP -> FSDP2) to it, and reads each
parameter's local shard from the resulting DTensors. Per learner rank: fp32 master parameters,
fp32 gradients and AdamW's two fp32 moments. Per rollout rank (async layout): the policy's
weights in the compute dtype, sliced by the rollout layout (parallel/rollout_layout.py: heads,
SwiGLU and expert columns over rollout tp), and the KV cache for rollout.max_batch_size sequences of
prompt + max_new_tokens (and an EAGLE / MTP drafter's buffer of target hidden states), all
in the dtypes the rollout side builds. Activations, the allocator's slack, communication
buffers and the drafter's own weights are not counted, hence the headroom column."""

from __future__ import annotations

import json
import os
from pathlib import Path

GIB = 2**30


def _fake_world(world_size: int) -> None:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)


def _local_numel(param) -> int:
    return (param.to_local() if hasattr(param, "to_local") else param).numel()


def _meta_model(cfg):
    """The job's model without storage (its shape from model.flavor or an HF config.json)."""
    from titan_spec.formats.initial_load import model_args
    from titan_spec.models import build_model_from_args

    return build_model_from_args(cfg.model.name, model_args(cfg))


def learner_plan(cfg, dims) -> dict:
    from titan_spec.models.init import canonical_name
    from titan_spec.parallel.plans import parallelize

    model = _meta_model(cfg)
    parallelize(cfg.model.name, model, dims, cfg.parallelism, "cpu")
    local = {canonical_name(n): _local_numel(p) for n, p in model.named_parameters()}
    numel = sum(local.values())
    return {"local_numel": local, "params_gib": numel * 4 / GIB, "grads_gib": numel * 4 / GIB,
            "optimizer_gib": numel * 8 / GIB, "args": model.args}


def rollout_plan(cfg, args, prompt_tokens: int) -> dict:
    """Sized in the dtypes the rollout side builds (parallel/rollout_layout.rollout_dtypes;
    the KV cache and the drafter's hidden-state buffer in the weights' dtype:
    rollout/kv_cache.compute_dtype)."""
    from titan_spec.parallel.rollout_layout import rollout_dtypes, rollout_local_args, rollout_slice

    tp = cfg.async_rl.rollout_tp
    model = _meta_model(cfg)
    dtype, head_dtype = rollout_dtypes(cfg.parallelism)
    weight_bytes, layer0 = 0, 0
    for name, param in model.named_parameters():
        share = rollout_slice(name, param, tp, 0, args.n_kv_heads).numel()
        weight_bytes += share * (head_dtype if name.startswith("output.") else dtype).itemsize
        layer0 += share if name.startswith("layers.0.") else 0
    seq = prompt_tokens + cfg.rollout.max_new_tokens
    slots = cfg.rollout.max_batch_size * seq
    local_kv_heads = rollout_local_args(args, tp).n_kv_heads
    kv = 2 * args.n_layers * slots * local_kv_heads * args.head_dim * dtype.itemsize
    # EAGLE / MTP heads read the target's final hidden state per slot and position (EAGLE-3:
    # three layers' side by side), kept whole on every rank.
    widths = {"eagle": 1, "mtp": 1, "eagle3": 3}
    hidden = slots * args.dim * widths.get(cfg.drafter.kind, 0) * dtype.itemsize
    return {"weights_gib": weight_bytes / GIB, "kv_cache_gib": kv / GIB,
            "draft_hidden_gib": hidden / GIB, "kv_sequence_tokens": seq, "layer0_numel": layer0}


def run(cfg, world_size: int, prompt_tokens: int = 512) -> dict:
    from titan_spec.parallel.parallel_dims import ParallelDims
    from titan_spec.preflight import split_world

    _fake_world(world_size)
    if cfg.async_rl.rollout_ranks:
        dims, _ = split_world(cfg, world_size)
    else:
        dims = ParallelDims.from_config(cfg.parallelism, world_size)
    dims.build_meshes("cpu")
    learner = learner_plan(cfg, dims)
    args = learner.pop("args")
    device = cfg.job.device_memory_gib
    learner_total = learner["params_gib"] + learner["grads_gib"] + learner["optimizer_gib"]
    rows = [{"role": "learner", "ranks": dims.world_size, "layout":
             f"dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} tp={dims.tp} "
             f"ep={dims.ep}", "params_gib": learner["params_gib"],
             "grads_gib": learner["grads_gib"], "optimizer_gib": learner["optimizer_gib"],
             "total_gib": learner_total}]
    if cfg.async_rl.rollout_ranks:
        rollout = rollout_plan(cfg, args, prompt_tokens)
        ranks, tp = cfg.async_rl.rollout_ranks, cfg.async_rl.rollout_tp
        rows.append({"role": "rollout", "ranks": ranks, "layout":
                     f"replicas={ranks // tp} tp={tp}", **rollout,
                     "total_gib": rollout["weights_gib"] + rollout["kv_cache_gib"]
                     + rollout["draft_hidden_gib"]})
    for row in rows:
        row["fits"] = row["total_gib"] <= device
    from titan_spec.formats.initial_load import hf_folder

    source = hf_folder(cfg) or cfg.model.flavor
    return {"model": f"{cfg.model.name}/{source}", "params": args.num_params(),
            "world_size": world_size, "device_memory_gib": device, "rows": rows,
            "learner_local_numel": learner["local_numel"]}


def format_table(plan: dict) -> str:
    head = (f"dry run: {plan['model']} ({plan['params'] / 1e9:.1f}B parameters) on "
            f"{plan['world_size']} ranks, {plan['device_memory_gib']:.0f} GiB per device")
    columns = ("role", "ranks", "params", "grads", "optimizer", "weights", "kv_cache",
               "hidden", "total", "headroom", "fits")
    lines = [head, "  ".join(f"{c:>9}" for c in columns)]
    for row in plan["rows"]:
        values = [row["role"], str(row["ranks"])]
        for key in ("params_gib", "grads_gib", "optimizer_gib", "weights_gib", "kv_cache_gib",
                    "draft_hidden_gib", "total_gib"):
            values.append(f"{row[key]:.1f}" if key in row else "-")
        values.append(f"{plan['device_memory_gib'] - row['total_gib']:.1f}")
        values.append("yes" if row["fits"] else "NO")
        lines.append("  ".join(f"{v:>9}" for v in values) + f"   {row['layout']}")
    lines.append("per-rank GiB; activations, allocator slack and communication buffers are not "
                 "counted (they come out of the headroom)")
    return "\n".join(lines)


def main(cfg, world_size: int) -> int:
    plan = run(cfg, world_size)
    print(format_table(plan), flush=True)
    folder = Path(cfg.job.dump_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dry_run.json").write_text(json.dumps(plan, indent=1))
    return 0 if all(row["fits"] for row in plan["rows"]) else 1


def world_size_for(cfg, launcher_world: int | None) -> int:
    if cfg.job.world_size:
        return cfg.job.world_size
    if launcher_world:
        return launcher_world
    return int(os.environ.get("WORLD_SIZE", "1"))


__all__ = ["run", "format_table", "main", "world_size_for"]
