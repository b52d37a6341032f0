"""AdamW with decay/no-decay groups, and a global gradient-norm clip that understands DTensor
gradients sharded over different meshes (FSDP2, TP, EP)."""

from __future__ import annotations

import math

import torch
from torch import nn

from titan_spec import comm


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # foreach kernels cannot mix DTensors that live on different meshes (dense vs experts vs
    # 2-D FSDP+TP), so use the per-parameter path whenever a parameter is a DTensor.
    mixed = any(hasattr(p, "device_mesh") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             foreach=not mixed)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def global_grad_norm(params) -> torch.Tensor:
    """L2 norm of all gradients as if they were full tensors on one device.

    Gradients are grouped by (mesh, placements): the local squared sums of a group are
    all-reduced over the mesh axes on which the group is sharded, never over replicated ones."""
    groups: dict = {}
    for param in params:
        grad = param.grad
        if grad is None:
            continue
        mesh = getattr(grad, "device_mesh", None)
        key = (id(mesh), tuple(getattr(grad, "placements", ())))
        groups.setdefault(key, (mesh, grad, []))[2].append(_local(grad).float().pow(2).sum())
    total = torch.zeros(())
    for mesh, sample, squares in groups.values():
        local_sum = torch.stack(squares).sum()
        if mesh is not None:
            for axis, placement in enumerate(sample.placements):
                # Anything but Replicate (Shard, _StridedShard from FSDP2 over TP, Partial)
                # holds a part of the sum.
                if not placement.is_replicate():
                    comm.all_reduce(local_sum, group=mesh.get_group(axis))
        total = total + local_sum.cpu()
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    norm = global_grad_norm(params)
    if max_norm > 0 and math.isfinite(norm.item()):
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for param in params:
            _local(param.grad).mul_(scale.to(_local(param.grad).device))
    return norm.item()
