"""Triton rejection sampler: a per-sequence accept kernel that reads only the drafted tokens'
probabilities, and a vocab-blocked resample kernel that reads only the one target (and draft)
row per sequence that needs a residual or bonus draw. Equal to rejection_reference.py given the
same uniforms and noise: same float64 acceptance test, same float32 scores, same first-index
tie-break."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def accept_kernel(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, uniforms_ptr, out_ptr,
                  num_accepted_ptr, num_drafts, vocab_size, HAS_DRAFT_PROBS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    accepting = tl.full((), 1, tl.int32)
    count = tl.full((), 0, tl.int64)
    for i in range(0, num_drafts):
        token = tl.load(draft_ids_ptr + row * num_drafts + i)
        target = tl.load(target_probs_ptr + (row * (num_drafts + 1) + i) * vocab_size + token)
        target = target.to(tl.float64)
        if HAS_DRAFT_PROBS:
            draft = tl.load(draft_probs_ptr + (row * num_drafts + i) * vocab_size + token)
            draft = draft.to(tl.float64)
        else:
            draft = tl.full((), 1.0, tl.float64)
        uniform = tl.load(uniforms_ptr + row * num_drafts + i)
        safe_draft = tl.where(draft > 0, draft, 1.0)
        # float64 division is IEEE round-to-nearest on every backend (as in torch).
        ok = (draft > 0) & (uniform < target / safe_draft)
        accepting = accepting & ok.to(tl.int32)
        tl.store(out_ptr + row * (num_drafts + 1) + i, tl.where(accepting != 0, token, -1))
        count += accepting.to(tl.int64)
    tl.store(out_ptr + row * (num_drafts + 1) + num_drafts, -1)
    tl.store(num_accepted_ptr + row, count)


@triton.jit
def resample_kernel(num_accepted_ptr, draft_ids_ptr, draft_probs_ptr, target_probs_ptr, noise_ptr,
                    out_ptr, num_drafts, vocab_size, HAS_DRAFT_PROBS: tl.constexpr,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    accepted = tl.load(num_accepted_ptr + row)
    needs_residual = accepted < num_drafts  # else: all accepted, bonus draw from target
    draft_limit = tl.where(needs_residual, vocab_size, 0)  # no draft row read for a bonus
    draft_pos = tl.minimum(accepted, tl.maximum(num_drafts - 1, 0))
    target_row = target_probs_ptr + (row * (num_drafts + 1) + accepted) * vocab_size
    draft_row = draft_probs_ptr + (row * num_drafts + draft_pos) * vocab_size
    draft_token = tl.load(draft_ids_ptr + row * num_drafts + draft_pos,
                          mask=num_drafts > 0, other=-1)
    best_residual = tl.full((), -1.0, tl.float32)
    best_residual_id = tl.full((), 0, tl.int64)
    best_target = tl.full((), -1.0, tl.float32)
    best_target_id = tl.full((), 0, tl.int64)
    for start in range(0, vocab_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_vocab = offsets < vocab_size
        target = tl.load(target_row + offsets, mask=in_vocab, other=0.0).to(tl.float32)
        if HAS_DRAFT_PROBS:
            draft = tl.load(draft_row + offsets, mask=offsets < draft_limit, other=0.0)
            draft = draft.to(tl.float32)
        else:
            draft = tl.where((offsets == draft_token) & needs_residual, 1.0, 0.0)
        noise = tl.load(noise_ptr + row * vocab_size + offsets, mask=in_vocab, other=1.0)
        # div_rn: IEEE float32 division like torch; plain '/' may compile to an approximation.
        residual_score = tl.math.div_rn(tl.maximum(target - draft, 0.0), noise)
        target_score = tl.math.div_rn(target, noise)
        # Strict '>' across blocks keeps the earliest index among ties, like torch.argmax.
        block_best, block_id = tl.max(residual_score, axis=0, return_indices=True,
                                      return_indices_tie_break_left=True)
        better = block_best > best_residual
        best_residual_id = tl.where(better, start + block_id.to(tl.int64), best_residual_id)
        best_residual = tl.where(better, block_best, best_residual)
        block_best, block_id = tl.max(target_score, axis=0, return_indices=True,
                                      return_indices_tie_break_left=True)
        better = block_best > best_target
        best_target_id = tl.where(better, start + block_id.to(tl.int64), best_target_id)
        best_target = tl.where(better, block_best, best_target)
    token = tl.where(best_residual > 0, best_residual_id, best_target_id)
    tl.store(out_ptr + row * (num_drafts + 1) + accepted, token)


def rejection_sample_triton(draft_token_ids, draft_probs, target_probs, uniforms, noise,
                            block: int = 1024):
    batch, k = draft_token_ids.shape
    vocab = target_probs.shape[-1]
    draft_token_ids, target_probs = draft_token_ids.contiguous(), target_probs.contiguous()
    has_draft_probs = draft_probs is not None
    draft_probs = draft_probs.contiguous() if has_draft_probs else target_probs  # unused pointer
    out = torch.empty((batch, k + 1), dtype=torch.long, device=target_probs.device)
    num_accepted = torch.empty(batch, dtype=torch.long, device=target_probs.device)
    accept_kernel[(batch,)](draft_token_ids, draft_probs, target_probs, uniforms.contiguous(),
                            out, num_accepted, k, vocab, HAS_DRAFT_PROBS=has_draft_probs)
    resample_kernel[(batch,)](num_accepted, draft_token_ids, draft_probs, target_probs,
                              noise.contiguous(), out, k, vocab,
                              HAS_DRAFT_PROBS=has_draft_probs,
                              BLOCK=min(block, triton.next_power_of_2(vocab)))
    return out
