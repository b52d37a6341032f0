"""Linear warm-up then cosine / linear / constant decay to min_lr_ratio x peak."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay: str, min_ratio: float):
    """Multiplier of the peak LR at optimizer step `step` (0-based: the first update is step 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def build_lr_scheduler(optimizer, cfg, total_steps: int, rl_lr_ratio: float | None = None,
                       rl_warmup_steps: int = 0):
    """The SFT schedule for the first `total_steps` optimizer steps; after them (the RL phase,
    when rl_lr_ratio is given) a constant rl_lr_ratio x peak with its own linear warm-up."""

    def factor(step: int) -> float:
        if rl_lr_ratio is None or step < total_steps:
            return lr_factor(step, cfg.warmup_steps, total_steps, cfg.decay, cfg.min_lr_ratio)
        rl_step = step - total_steps
        return rl_lr_ratio * min(1.0, (rl_step + 1) / (rl_warmup_steps + 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def refresh_after_load(scheduler, peak_lr: float) -> None:
    """After loading a checkpoint: this run's peak LR (a checkpoint from another run carries its
    own) and the LR of the next step under THIS run's schedule, not the saved one."""
    scheduler.base_lrs = [peak_lr] * len(scheduler.optimizer.param_groups)
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas,
                             strict=True):
        group["lr"] = peak_lr * factor(scheduler.last_epoch)
