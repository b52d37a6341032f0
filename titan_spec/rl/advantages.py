"""Group-relative advantages (GRPO) and the DAPO dynamic-sampling filter.

Rewards arrive as one flat vector with the G samples of each prompt adjacent:
[p0 s0, p0 s1, ..., p0 s(G-1), p1 s0, ...]."""

from __future__ import annotations

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a flat vector whose length ({rewards.numel()}) is a "
                         f"multiple of group_size={group_size}.")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards [N] -> advantages [N]: reward minus its group's mean, divided by the group's
    (unbiased) std when normalize_std (GRPO; false is Dr. GRPO). All-equal groups get 0."""
    groups = _grouped(rewards.float(), group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] bool: samples whose group's rewards are not all equal (those carry gradient)."""
    groups = _grouped(rewards, group_size)
    varied = (groups != groups[:, :1]).any(dim=1, keepdim=True)
    return varied.expand_as(groups).reshape(-1)
