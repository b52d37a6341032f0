"""Materialise a meta-device model and initialise it as a function of (seed, parameter name)
only: every parallel layout (FSDP2, TP, EP, 2-D) starts from bit-identical full weights, each
rank keeping its shard. That is what makes cross-layout loss parity testable."""

from __future__ import annotations

import zlib

import torch
from torch import nn

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _full_init(shape, std: float | None, seed: int, name: str) -> torch.Tensor:
    if std is None:
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator) * std


@torch.no_grad()
def materialize(model: nn.Module, device) -> nn.Module:
    """Allocate a meta-device model's (local) storage, uninitialised, and its buffers."""
    model.to_empty(device=device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.init_buffers(device)
    return model


@torch.no_grad()
def materialize_and_init(model: nn.Module, device, seed: int) -> nn.Module:
    return init_weights(materialize(model, device), device, seed)


@torch.no_grad()
def init_weights(model: nn.Module, device, seed: int) -> nn.Module:
    """Fill a materialised model's parameters from (seed, parameter name)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for raw_name, param in model.named_parameters():
        name = canonical_name(raw_name)
        full = _full_init(tuple(param.shape), model.init_std(name), seed, name)
        if isinstance(param, DTensor):
            shard = distribute_tensor(full.to(device), param.device_mesh, param.placements,
                                      src_data_rank=None)
            param.to_local().copy_(shard.to_local())
        else:
            param.copy_(full)
    return model
