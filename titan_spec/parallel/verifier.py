"""The verifier of colocated (synchronous) RL: the learner's own module, without FSDP hooks in
the decode loop.

`colocated_verifier(model, dims, builder)` unshards every FSDP2 module once (one all-gather per
parameter group for the whole rollout phase), then yields a plain module whose parameters ARE
the unsharded tensors (no copy): decoding through it costs what a plain module costs, instead of
paying FSDP's pre/post-forward hooks at every one of the hundreds of decode steps. On exit the
view is dropped and the learner reshards, so training resumes on the sharded module.

Under tensor parallelism the view stays tensor-parallel: each rank holds its local heads and
SwiGLU columns, and the row-parallel projections all-reduce their outputs (one all-reduce per
projection, as in training). The embedding and output head are gathered to full copies for the
rollout phase: scoring and the EAGLE / MTP drafters read the whole head (a vocab x dim copy
each), while verification computes only this rank's rows of it (rollout.vocab_parallel).
Experts sharded by EP are gathered too (the rollout runs every expert locally)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from titan_spec.models.init import canonical_name

from .tensor_parallel import local_args, swap_row_parallel

# Parameters the view holds whole even when the learner shards them.
_GATHERED = ("tok_embeddings.weight", "output.weight")


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


def build_view(model: nn.Module, builder, tp: int = 1, tp_group=None,
               prepare=None) -> nn.Module:
    """A plain module over `model`'s current (unsharded) parameters; prepare(view) converts
    its layers first (the verifier's FP8 recipe: parallel/fp8.py)."""
    args = local_args(model.args, tp) if tp > 1 else model.args
    with torch.device("meta"):
        view = builder(args)
    for raw_name, param in model.named_parameters():
        name = canonical_name(raw_name)
        _set_param(view, name, _view_tensor(name, param))
    view.tie_weights()
    view.rope_cos, view.rope_sin = model.rope_cos, model.rope_sin
    if prepare is not None:
        prepare(view)
    if tp > 1:
        swap_row_parallel(view, tp_group)
    on_meta = [n for n, p in view.named_parameters() if p.is_meta]
    assert not on_meta, f"view parameters left on meta: {on_meta}"
    return view.eval()


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def colocated_verifier(model: nn.Module, parallel_dims, builder, prepare=None):
    """Yield a hook-free view of the learner for one rollout phase (see module docstring)."""
    sharded = fsdp_modules(model)
    for module in sharded:
        module.unshard()
    try:
        yield build_view(model, builder, parallel_dims.tp, parallel_dims.tp_group(), prepare)
    finally:
        for module in sharded:
            module.reshard()
