"""Policy losses behind a registry. Each returns (loss, metrics).

Token-level normalisation: the loss on each rank is the SUM over its valid tokens divided by
the GLOBAL number of valid tokens of the step (all ranks, all micro-batches), so summed
gradients (parallel/fsdp.py) equal the gradient of the global token mean whatever the layout.
Metric values are normalised the same way: summing them over ranks gives global means."""

from __future__ import annotations

import torch


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimator of KL(policy || reference), unbiased and >= 0 (Schulman's k3)."""
    log_ratio = ref_logprobs - logprobs
    return log_ratio.exp() - log_ratio - 1


def grpo_loss(logprobs, old_logprobs, advantages, mask, num_global_tokens, clip_low: float,
              clip_high: float, ref_logprobs=None, kl_coef: float = 0.0, is_weights=None):
    """Clipped surrogate with asymmetric clipping (DAPO clip-higher).

    logprobs [B, T] (with grad), old_logprobs [B, T] (the policy that the ratio is taken
    against), advantages [B], mask [B, T] (1 on completion tokens), num_global_tokens: valid
    tokens of the whole step. is_weights [B, T]: optional (already truncated) importance
    weights for off-policy samples; None means on-policy."""
    mask = mask.to(logprobs.dtype)
    ratio = (logprobs - old_logprobs).exp()
    adv = advantages.unsqueeze(1).to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = None
    if ref_logprobs is not None and kl_coef > 0:
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + kl_coef * kl
    loss = (per_token * mask).sum() / num_global_tokens
    with torch.no_grad():
        clipped_tokens = ((unclipped > clipped) & (mask > 0)).to(mask.dtype)
        metrics = {
            "clip_fraction": clipped_tokens.sum() / num_global_tokens,
            "ratio_mean": (ratio * mask).sum() / num_global_tokens,
        }
        if kl is not None:
            metrics["kl"] = (kl * mask).sum() / num_global_tokens
    return loss, metrics


LOSSES = {"grpo": grpo_loss}


def build_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown rl.loss '{name}'; available: {', '.join(LOSSES)}.")
    return LOSSES[name]
