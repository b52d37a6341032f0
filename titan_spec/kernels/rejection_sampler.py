"""Public rejection_sample(): the lossless acceptance rules of DESIGN.md (rejection_reference.py
states them), and sample(): the drafters' categorical draw.

Random numbers are counter-based (counter_rng.py): keyed by (seed, request, position, stream),
so a request's result does not depend on what else shares its batch. The Triton kernels run on
CUDA tensors and draw the numbers in the kernel; elsewhere the CPU twin draws the same numbers
for the whole iteration at once and the PyTorch reference, which the kernels equal, uses them."""

from __future__ import annotations

import os

import torch

from .counter_rng import ACCEPT, RESIDUAL, RandomKeys, draw_keys, exponentials, uniforms
from .rejection_reference import RULES, rejection_sample_reference, sample_reference
from .vocab_shard import VocabShard


def triton_available(device: torch.device) -> bool:
    if os.environ.get("TITAN_SPEC_DISABLE_TRITON") == "1" or device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check(draft_token_ids, draft_probs, target_probs, rule):
    batch, k = draft_token_ids.shape
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: choose one of {', '.join(RULES)}.")
    if target_probs.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_probs must be [B, k+1, V] = [{batch}, {k + 1}, V], got "
                         f"{tuple(target_probs.shape)}.")
    if draft_probs is not None and draft_probs.shape != (batch, k, target_probs.shape[-1]):
        raise ValueError(f"draft_probs must be [B, k, V] = [{batch}, {k}, "
                         f"{target_probs.shape[-1]}], got {tuple(draft_probs.shape)}.")


def rejection_sample(
    draft_token_ids: torch.LongTensor,  # [B, k]
    draft_probs: torch.Tensor | None,  # [B, k, V], or None for deterministic drafters
    target_probs: torch.Tensor,  # [B, k+1, V], already temperature/top-k/top-p processed
    generator: torch.Generator | None = None,
    rule: str = "token",  # "token" or "block"
    keys: RandomKeys | None = None,  # the rows' random keys; drawn from `generator` if None
    shard: VocabShard | None = None,  # the probabilities hold these columns (tensor parallel)
) -> torch.LongTensor:  # [B, k+1]: emitted tokens, then -1 padding
    """With a sharded `shard`, draft_probs and target_probs hold that shard's vocabulary
    columns and every tp rank gets the single-rank result (kernels/vocab_shard.py); that path
    runs the PyTorch reference with noise from the CPU twin on every device."""
    _check(draft_token_ids, draft_probs, target_probs, rule)
    if keys is None:
        keys = draw_keys(draft_token_ids.shape[0], generator)
    keys = RandomKeys(keys.seed, keys.request_ids.to(target_probs.device),
                      keys.positions.to(target_probs.device))
    sharded = shard is not None and not shard.is_whole
    if triton_available(target_probs.device) and not sharded:
        from .rejection_triton import rejection_sample_triton

        return rejection_sample_triton(draft_token_ids, draft_probs, target_probs, keys, rule)
    acceptance_uniforms = uniforms(keys, draft_token_ids.shape[1], ACCEPT)
    start = shard.start if shard is not None else 0
    noise = exponentials(keys, target_probs.shape[-1], RESIDUAL, start)
    return rejection_sample_reference(draft_token_ids, draft_probs, target_probs,
                                      acceptance_uniforms, noise, rule, shard)


def sample(probs: torch.Tensor, keys: RandomKeys, stream: int) -> torch.LongTensor:
    """One draw per row of probs [B, V] from the counter-based stream `stream` -> [B]."""
    if triton_available(probs.device):
        from .rejection_triton import sample_triton

        return sample_triton(probs, keys, stream)
    return sample_reference(probs, exponentials(keys, probs.shape[-1], stream))
