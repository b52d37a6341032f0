"""The learner's module as the rollout verifier, without FSDP hooks in the decode loop.

`colocated_policy(model, dims, builder)` unshards every FSDP2 module once (one all-gather per
parameter group for the whole rollout phase), then yields a plain module whose parameters ARE
the unsharded tensors (no copy): decoding through it costs what a plain module costs, instead of
paying FSDP's pre/post-forward hooks at every one of the hundreds of decode steps. On exit the
view is dropped and the learner reshards, so training resumes on the sharded module.

Under tensor parallelism the view stays tensor-parallel: each rank holds its local heads and
SwiGLU columns, and the row-parallel projections all-reduce their outputs (one all-reduce per
projection, as in training). The embedding and output head are gathered to full copies for the
rollout phase so that logits come out whole and drafters can use them (a vocab x dim copy each).
Experts sharded by EP are gathered too (the rollout runs every expert locally)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from .init import canonical_name
from .rollout_layout import rollout_local_args, split_experts
from .tensor_parallel import ROW_PARALLEL, local_args

# Parameters the view holds whole even when the learner shards them.
_GATHERED = ("tok_embeddings.weight", "output.weight")


class RowParallelLinear(nn.Module):
    """y = x W_local^T summed over tp ranks (the local input holds this rank's columns)."""

    def __init__(self, weight: torch.Tensor, group):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group = group

    def forward(self, x):
        out = F.linear(x, self.weight)
        dist.all_reduce(out, group=self.group)
        return out


def _view_tensor(name: str, param) -> torch.Tensor:
    if not isinstance(param, DTensor):
        return param.detach()
    if name in _GATHERED or ".moe.experts." in name:
        return param.full_tensor().detach()
    return param.to_local().detach()  # a tensor-parallel shard: shares storage


def _set_param(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))


def _swap_row_parallel(module: nn.Module, tp_group) -> None:
    for block in module.layers.values():
        for path in ROW_PARALLEL:
            if not _has(block, path):
                continue
            owner_path, _, attr = path.rpartition(".")
            owner = block.get_submodule(owner_path)
            setattr(owner, attr, RowParallelLinear(getattr(owner, attr).weight, tp_group))


def build_view(model: nn.Module, builder, tp: int = 1, tp_group=None) -> nn.Module:
    """A plain module over `model`'s current (unsharded) parameters."""
    args = local_args(model.args, tp) if tp > 1 else model.args
    with torch.device("meta"):
        view = builder(args)
    for raw_name, param in model.named_parameters():
        name = canonical_name(raw_name)
        _set_param(view, name, _view_tensor(name, param))
    view.tie_weights()
    view.rope_cos, view.rope_sin = model.rope_cos, model.rope_sin
    if tp > 1:
        _swap_row_parallel(view, tp_group)
    on_meta = [n for n, p in view.named_parameters() if p.is_meta]
    assert not on_meta, f"view parameters left on meta: {on_meta}"
    return view.eval()


def build_rollout_model(builder, args, device, tp: int = 1, tp_group=None) -> nn.Module:
    """An empty inference module in the rollout layout (whole, or this tp rank's slice:
    parallel/rollout_layout.py); weight_sync fills it."""
    with torch.device("meta"):
        module = builder(rollout_local_args(args, tp))
    if tp > 1:
        split_experts(module, tp_group)
    module.to_empty(device=device)
    module.tie_weights()
    module.init_buffers(device)
    if tp > 1:
        _swap_row_parallel(module, tp_group)
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def colocated_policy(model: nn.Module, parallel_dims, builder):
    """Yield a hook-free view of the learner for one rollout phase (see module docstring)."""
    sharded = fsdp_modules(model)
    for module in sharded:
        module.unshard()
    try:
        tp = parallel_dims.tp if parallel_dims is not None else 1
        group = parallel_dims.mesh("tp").get_group() if tp > 1 else None
        yield build_view(model, builder, tp, group)
    finally:
        for module in sharded:
            module.reshard()
