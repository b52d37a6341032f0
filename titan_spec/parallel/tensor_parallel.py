"""Tensor-parallel plans (DTensor, parallelize_module) for decoder blocks.

Attention and SwiGLU use the Megatron pairing: column-parallel in-projections, row-parallel
out-projections, so each block costs one all-reduce forward and one backward. The embedding is
vocab-parallel and the output head column-parallel with replicated logits. Per-head q/k norms see
only the local heads, so their weight gradients are partial sums across tp ranks:
`reduce_partial_grads` all-reduces them after backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

from titan_spec import comm

PARTIAL_GRAD_ATTR = "_tp_partial_grad_params"
# Row-parallel projections of a block: their outputs are partial sums over tp ranks.
ROW_PARALLEL = ("attention.wo", "feed_forward.w2")


def local_args(args, tp: int):
    """The shape one tp rank holds of each block: its heads and SwiGLU columns."""
    return args.with_overrides(n_heads=args.n_heads // tp, n_kv_heads=args.n_kv_heads // tp,
                               hidden_dim=args.hidden_dim // tp)


def check_tp_divisibility(args, tp: int) -> None:
    checks = {
        "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "vocab_size": args.vocab_size,
        "hidden_dim": args.hidden_dim,
    }
    bad = {k: v for k, v in checks.items() if v % tp}
    if bad:
        raise ValueError(
            f"parallelism.tp={tp} must divide the model's {bad}; choose a tp that divides "
            f"all of {checks}."
        )
    if args.tie_embeddings:
        raise ValueError(
            "tensor parallelism with tied embeddings is not supported yet (the vocab-parallel "
            "embedding and column-parallel head shard the shared weight differently); use tp=1."
        )


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "output": ColwiseParallel(output_layouts=Replicate()),
    })
    for block in model.layers.values():
        plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            ROW_PARALLEL[0]: RowwiseParallel(),
        }
        if hasattr(block, "feed_forward"):
            plan.update({
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w3": ColwiseParallel(),
                ROW_PARALLEL[1]: RowwiseParallel(),
            })
        # MoE blocks: router and experts stay replicated over tp (identical inputs, identical
        # gradients); experts are split over `ep` instead.
        parallelize_module(block, tp_mesh, plan)
    setattr(model, PARTIAL_GRAD_ATTR, tp_mesh)


def reduce_partial_grads(model: nn.Module) -> None:
    """Sum, over tp ranks, the gradients that each tp rank only holds a part of."""
    tp_mesh = getattr(model, PARTIAL_GRAD_ATTR, None)
    if tp_mesh is None:
        return
    grads = [p.grad for p in partial_params(model) if p.grad is not None]
    if not grads:
        return
    locals_ = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    flat = torch.cat([t.reshape(-1) for t in locals_])
    comm.all_reduce(flat, group=tp_mesh.get_group())
    offset = 0
    for t in locals_:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def partial_params(model: nn.Module) -> list:
    """The q/k-norm weights recorded at plan time, looked up again by name: FSDP2 swaps
    parameter objects after the TP plan is applied."""
    from titan_spec.models.init import canonical_name

    suffixes = ("attention.q_norm.weight", "attention.k_norm.weight")
    return [p for n, p in model.named_parameters() if canonical_name(n).endswith(suffixes)]


class RowParallelLinear(nn.Module):
    """y = x W_local^T summed over tp ranks (the local input holds this rank's columns)."""

    def __init__(self, weight: torch.Tensor, group):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group = group

    def forward(self, x):
        out = F.linear(x, self.weight)
        comm.all_reduce(out, group=self.group)
        return out


def swap_row_parallel(module: nn.Module, tp_group) -> None:
    """Replace the row-parallel projections of a plain module holding one tp rank's slice by
    modules that all-reduce their outputs (inference: the verifier view, rollout replicas)."""
    for block in module.layers.values():
        for path in ROW_PARALLEL:
            if not _has(block, path):
                continue
            owner_path, _, attr = path.rpartition(".")
            owner = block.get_submodule(owner_path)
            setattr(owner, attr, RowParallelLinear(getattr(owner, attr).weight, tp_group))


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False
