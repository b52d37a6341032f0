"""Public rejection_sample(): the lossless acceptance rule of DESIGN.md.

Random numbers come from two separate streams derived from `generator`: float64 acceptance
uniforms [B, k] and the exponential noise [B, V] of the one residual/bonus draw per row. The
Triton kernels run on CUDA tensors; elsewhere the PyTorch reference, which they equal exactly
given the same random numbers."""

from __future__ import annotations

import os

import torch

from .rejection_reference import rejection_sample_reference

_TINY = torch.finfo(torch.float32).tiny


def triton_available(device: torch.device) -> bool:
    if os.environ.get("TITAN_SPEC_DISABLE_TRITON") == "1" or device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def draw_random(batch: int, num_drafts: int, vocab: int, device, generator=None):
    """-> (uniforms [B, k] float64, noise [B, V] float32 > 0) from separate streams."""
    uniforms = torch.rand((batch, num_drafts), dtype=torch.float64, device=device,
                          generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    noise_stream = torch.Generator(device=device).manual_seed(seed)
    noise = torch.empty((batch, vocab), dtype=torch.float32, device=device)
    noise.exponential_(generator=noise_stream).clamp_(min=_TINY)
    return uniforms, noise


def rejection_sample(
    draft_token_ids: torch.LongTensor,  # [B, k]
    draft_probs: torch.Tensor | None,  # [B, k, V], or None for deterministic drafters
    target_probs: torch.Tensor,  # [B, k+1, V], already temperature/top-k/top-p processed
    generator: torch.Generator | None = None,
) -> torch.LongTensor:  # [B, k+1]: emitted tokens, then -1 padding
    batch, k = draft_token_ids.shape
    if target_probs.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_probs must be [B, k+1, V] = [{batch}, {k + 1}, V], got "
                         f"{tuple(target_probs.shape)}.")
    if draft_probs is not None and draft_probs.shape != (batch, k, target_probs.shape[-1]):
        raise ValueError(f"draft_probs must be [B, k, V] = [{batch}, {k}, "
                         f"{target_probs.shape[-1]}], got {tuple(draft_probs.shape)}.")
    uniforms, noise = draw_random(batch, k, target_probs.shape[-1], target_probs.device,
                                  generator)
    return rejection_sample_given(draft_token_ids, draft_probs, target_probs, uniforms, noise)


def rejection_sample_given(draft_token_ids, draft_probs, target_probs, uniforms, noise):
    """rejection_sample with caller-drawn random numbers (uniforms [B, k] float64, noise
    [B, V] > 0): the engine draws them per request so a request's result does not depend on
    what else shares its batch."""
    if triton_available(target_probs.device):
        from .rejection_triton import rejection_sample_triton

        return rejection_sample_triton(draft_token_ids, draft_probs, target_probs, uniforms,
                                       noise)
    return rejection_sample_reference(draft_token_ids, draft_probs, target_probs, uniforms, noise)
