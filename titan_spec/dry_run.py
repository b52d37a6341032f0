"""Dry run: the memory plan of a job too large for this machine.

Builds the model on the meta device, initialises a fake process group of the job's full world
size, applies the learner's real parallel plans (TP -> EP -> FSDP2) to it, and reads each
parameter's local shard from the resulting DTensors. Per learner rank: fp32 master parameters,
fp32 gradients and AdamW's two fp32 moments. Per rollout rank (async layout): the policy's
weights in the compute dtype, sliced by the rollout layout (parallel/rollout_layout.py: heads,
SwiGLU and expert columns over rollout tp), and the KV cache for rollout.max_batch_size sequences of
prompt + max_new_tokens (and an EAGLE / MTP drafter's buffer of target hidden states), all
in the dtypes the rollout side builds. The drafter's own weights on every rank (plain fp32
modules, replicated), with its gradients and AdamW moments on learner ranks when it trains.
Activations, the allocator's slack and communication buffers are not counted, hence the
headroom column."""

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
            "optimizer_gib": numel * 8 / GIB, "args": model.args, "model": model}


def sync_plan(cfg, model, n_kv_heads: int) -> dict:
    """One policy sync of async RL with async_rl.weight_sync = sharded (parallel/
    reshard_plan.py: the same plan the job computes): the bytes the busiest learner rank sends
    and each rollout rank receives, and the time at job.link_gb_per_s per rank; the gathering
    sync's time beside it (every learner rank all-gathers each fp32 parameter, then the fp32
    model is broadcast to the rollout ranks: about twice its size through each link).
    Parameters only (the policy has no persistent buffers)."""
    from titan_spec.models.init import canonical_name
    from titan_spec.parallel.reshard_plan import box_numel, boxes_by_rank, plan_transfers
    from titan_spec.parallel.rollout_layout import rollout_box, rollout_dtypes

    tp = cfg.async_rl.rollout_tp
    replicas = cfg.async_rl.rollout_ranks // tp
    dtype, head_dtype = rollout_dtypes(cfg.parallelism)
    learner_boxes, itemsize, fp32_bytes = {}, {}, 0
    rollout_boxes = {rank: {} for rank in range(tp)}  # one replica: the others are the same
    for name, param in model.named_parameters():
        name = canonical_name(name)
        for rank, box in boxes_by_rank(param).items():
            learner_boxes.setdefault(rank, {})[name] = box
        for rank in range(tp):
            rollout_boxes[rank][name] = rollout_box(name, param.shape, tp, rank, n_kv_heads)
        itemsize[name] = (head_dtype if name.startswith("output.") else dtype).itemsize
        fp32_bytes += param.numel() * 4
    sent, received = {}, {}
    for transfer in plan_transfers(learner_boxes, rollout_boxes):
        nbytes = box_numel(transfer.box) * itemsize[transfer.name]
        sent[transfer.src] = sent.get(transfer.src, 0) + nbytes * replicas
        received[transfer.dst] = received.get(transfer.dst, 0) + nbytes
    link = cfg.job.link_gb_per_s * 1e9
    busiest = max(max(sent.values()), max(received.values()))
    return {"sent_per_learner_rank_gib": max(sent.values()) / GIB,
            "received_per_rollout_rank_gib": max(received.values()) / GIB,
            "link_gb_per_s": cfg.job.link_gb_per_s, "sharded_s": busiest / link,
            "gather_s": 2 * fp32_bytes / link}


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


def drafter_plan(cfg, model) -> dict:
    """The drafter as the run builds it (drafters/runtime.py), on the meta device: fp32 and
    replicated on every rank; learner ranks also hold fp32 gradients and AdamW's two moments
    when it trains (warm-up distillation or online adaptation)."""
    from titan_spec.drafters.runtime import DrafterRuntime

    runtime = DrafterRuntime.build(cfg.drafter, cfg.model, model.args, model, cfg.job.seed,
                                   "meta")
    numel = sum(p.numel() for p in runtime.module.parameters()) if runtime.module else 0
    trains = cfg.drafter.online or cfg.drafter.distill_steps > 0
    return {"numel": numel, "learner_gib": numel * (16 if trains else 4) / GIB,
            "rollout_gib": numel * 4 / GIB}


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
    args, model = learner.pop("args"), learner.pop("model")
    device = cfg.job.device_memory_gib
    drafter = drafter_plan(cfg, model)
    learner_total = (learner["params_gib"] + learner["grads_gib"] + learner["optimizer_gib"]
                     + drafter["learner_gib"])
    rows = [{"role": "learner", "ranks": dims.world_size, "layout":
             f"dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} tp={dims.tp} "
             f"ep={dims.ep}", "params_gib": learner["params_gib"],
             "grads_gib": learner["grads_gib"], "optimizer_gib": learner["optimizer_gib"],
             "drafter_gib": drafter["learner_gib"], "total_gib": learner_total}]
    if cfg.async_rl.rollout_ranks:
        rollout = rollout_plan(cfg, args, prompt_tokens)
        ranks, tp = cfg.async_rl.rollout_ranks, cfg.async_rl.rollout_tp
        rows.append({"role": "rollout", "ranks": ranks, "layout":
                     f"replicas={ranks // tp} tp={tp}", **rollout,
                     "drafter_gib": drafter["rollout_gib"],
                     "total_gib": rollout["weights_gib"] + rollout["kv_cache_gib"]
                     + rollout["draft_hidden_gib"] + drafter["rollout_gib"]})
    for row in rows:
        row["fits"] = row["total_gib"] <= device
    sync = sync_plan(cfg, model, args.n_kv_heads) if cfg.async_rl.rollout_ranks else None
    from titan_spec.formats.initial_load import hf_folder

    source = hf_folder(cfg) or cfg.model.flavor
    return {"model": f"{cfg.model.name}/{source}", "params": args.num_params(),
            "world_size": world_size, "device_memory_gib": device, "rows": rows,
            "drafter_params": drafter["numel"],
            "weight_sync": sync, "learner_local_numel": learner["local_numel"]}


def format_table(plan: dict) -> str:
    head = (f"dry run: {plan['model']} ({plan['params'] / 1e9:.1f}B parameters) on "
            f"{plan['world_size']} ranks, {plan['device_memory_gib']:.0f} GiB per device")
    columns = ("role", "ranks", "params", "grads", "optimizer", "weights", "kv_cache",
               "hidden", "drafter", "total", "headroom", "fits")
    lines = [head, "  ".join(f"{c:>9}" for c in columns)]
    for row in plan["rows"]:
        values = [row["role"], str(row["ranks"])]
        for key in ("params_gib", "grads_gib", "optimizer_gib", "weights_gib", "kv_cache_gib",
                    "draft_hidden_gib", "drafter_gib", "total_gib"):
            values.append(f"{row[key]:.1f}" if key in row else "-")
        values.append(f"{plan['device_memory_gib'] - row['total_gib']:.1f}")
        values.append("yes" if row["fits"] else "NO")
        lines.append("  ".join(f"{v:>9}" for v in values) + f"   {row['layout']}")
    lines.append("per-rank GiB; activations, allocator slack and communication buffers are not "
                 "counted (they come out of the headroom)")
    sync = plan.get("weight_sync")
    if sync:
        lines.append(f"weight sync per policy version (sharded): the busiest learner rank sends "
                     f"{sync['sent_per_learner_rank_gib']:.1f} GiB, each rollout rank receives "
                     f"{sync['received_per_rollout_rank_gib']:.1f} GiB: {sync['sharded_s']:.1f} s "
                     f"at {sync['link_gb_per_s']:.0f} GB/s per rank (gather: "
                     f"{sync['gather_s']:.1f} s)")
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
