"""Reductions over the data-parallel ranks of a ParallelDims. With one data-parallel rank they
return their input untouched, so callers never guard on the world size."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_dp(dims, value: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In place over the dp group (when there is one); returns `value`."""
    group = dims.dp_group()
    if group is not None:
        dist.all_reduce(value, op=op, group=group)
    return value


def dp_sum(dims, values: list[float], device) -> list[float]:
    """Sums of a list of numbers over the dp ranks, in float64."""
    return all_reduce_dp(dims, torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def dp_max(dims, values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    return all_reduce_dp(dims, tensor, op=dist.ReduceOp.MAX).tolist()
