"""Triton rejection sampler with its random numbers drawn in the kernel (tl.philox on the keys of
counter_rng.py, so no [B, V] noise tensor is ever written). Three kernels per iteration, one
program per sequence: an accept kernel (token rule: reads only the drafted tokens'
probabilities; block rule: also one pass over the next target / draft row per draft for the
residual mass), then a vocab-blocked resample kernel that reads the one target (and draft) row
the residual or bonus draw needs. `sample_kernel` is the drafters' categorical draw.

Equal to rejection_reference.py given counter_rng's numbers for the same keys: the same float64
arithmetic in the same order (fp fusion off; float64 '/' compiles to IEEE div.rn.f64),
fixed-point residual masses, the same first-index tie-break. The exponentials' float64 log is
libdevice's on CUDA and libm's in the twin: they may differ in the last bit, which changes a
draw only where two scores tie within 2**-52."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .counter_rng import ACCEPT, RESIDUAL, RandomKeys
from .rejection_reference import MASS_SCALE

LAUNCH_OPTIONS = {"enable_fp_fusion": False}  # a fused multiply-add would round differently
# Kernels read module globals only as constexprs.
_ACCEPT, _RESIDUAL = tl.constexpr(ACCEPT), tl.constexpr(RESIDUAL)
_MASS_SCALE = tl.constexpr(MASS_SCALE)


@triton.jit
def _philox_words(seed, element, request, position, stream):
    element = tl.full((), 0, tl.int64) + element  # a loop index may be a plain int
    zero = element * 0
    return tl.philox(seed, element.to(tl.uint32), (zero + request).to(tl.uint32),
                     (zero + position).to(tl.uint32), (zero + stream).to(tl.uint32))


@triton.jit
def _uniform(seed, element, request, position, stream):
    """53-bit float64 uniform in [0, 1), as counter_rng.uniforms."""
    w0, w1, _, _ = _philox_words(seed, element, request, position, stream)
    mantissa = ((w0 >> 5).to(tl.uint64) << 26) | (w1 >> 6).to(tl.uint64)
    return mantissa.to(tl.float64) * 1.1102230246251565e-16  # 2**-53


@triton.jit
def _exponential(seed, vocab_ids, request, position, stream):
    """float64 Exp(1) per vocabulary id, as counter_rng.exponentials (word id % 4 of id // 4)."""
    w0, w1, w2, w3 = _philox_words(seed, vocab_ids // 4, request, position, stream)
    lane = vocab_ids % 4
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return -tl.log((word.to(tl.float64) + 0.5) * 2.3283064365386963e-10)  # 2**-32


@triton.jit
def _ratio(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, row, i, num_drafts, vocab_size,
           HAS_DRAFT_PROBS: tl.constexpr):
    token = tl.load(draft_ids_ptr + row * num_drafts + i)
    target = tl.load(target_probs_ptr + (row * (num_drafts + 1) + i) * vocab_size + token)
    target = target.to(tl.float64)
    if HAS_DRAFT_PROBS:
        draft = tl.load(draft_probs_ptr + (row * num_drafts + i) * vocab_size + token)
        draft = draft.to(tl.float64)
    else:
        draft = tl.full((), 1.0, tl.float64)
    safe_draft = tl.where(draft > 0, draft, 1.0)
    return tl.where(draft > 0, target / safe_draft, 0.0), token


@triton.jit
def _write_prefix(out_ptr, draft_ids_ptr, row, accepted, num_drafts):
    for i in range(0, num_drafts + 1):
        token = tl.load(draft_ids_ptr + row * num_drafts + i, mask=i < num_drafts, other=-1)
        tl.store(out_ptr + row * (num_drafts + 1) + i, tl.where(i < accepted, token, -1))


@triton.jit
def token_accept_kernel(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, request_ptr,
                        position_ptr, seed, out_ptr, num_accepted_ptr, scale_ptr, num_drafts,
                        vocab_size, HAS_DRAFT_PROBS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    request, position = tl.load(request_ptr + row), tl.load(position_ptr + row)
    accepting = tl.full((), 1, tl.int32)
    count = tl.full((), 0, tl.int64)
    for i in range(0, num_drafts):
        ratio, _ = _ratio(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, row, i,
                          num_drafts, vocab_size, HAS_DRAFT_PROBS)
        uniform = _uniform(seed, i, request, position, _ACCEPT)
        accepting = accepting & (uniform < ratio).to(tl.int32)
        count += accepting.to(tl.int64)
    _write_prefix(out_ptr, draft_ids_ptr, row, count, num_drafts)
    tl.store(num_accepted_ptr + row, count)
    tl.store(scale_ptr + row, tl.full((), 1.0, tl.float64))


@triton.jit
def _residual_mass(target_probs_ptr, draft_probs_ptr, draft_ids_ptr, row, i, weight, num_drafts,
                   vocab_size, HAS_DRAFT_PROBS: tl.constexpr, BLOCK: tl.constexpr):
    """sum_x max(0, weight * target_i(x) - draft_i(x)) in fixed point, as residual_mass."""
    target_row = target_probs_ptr + (row * (num_drafts + 1) + i) * vocab_size
    draft_row = draft_probs_ptr + (row * num_drafts + i) * vocab_size
    draft_token = tl.load(draft_ids_ptr + row * num_drafts + i)
    total = tl.full((), 0, tl.int64)
    for start in range(0, vocab_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_vocab = offsets < vocab_size
        target = tl.load(target_row + offsets, mask=in_vocab, other=0.0).to(tl.float64)
        if HAS_DRAFT_PROBS:
            draft = tl.load(draft_row + offsets, mask=in_vocab, other=0.0).to(tl.float64)
        else:
            draft = tl.where(offsets == draft_token, 1.0, 0.0).to(tl.float64)
        term = tl.maximum(weight * target - draft, 0.0)
        total += tl.sum((term * _MASS_SCALE).to(tl.int64), axis=0)
    return total.to(tl.float64) / _MASS_SCALE


@triton.jit
def block_accept_kernel(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, request_ptr,
                        position_ptr, seed, out_ptr, num_accepted_ptr, scale_ptr, num_drafts,
                        vocab_size, HAS_DRAFT_PROBS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    request, position = tl.load(request_ptr + row), tl.load(position_ptr + row)
    weight = tl.full((), 1.0, tl.float64)
    scale = tl.full((), 1.0, tl.float64)
    accepted = tl.full((), 0, tl.int64)
    for i in range(0, num_drafts):
        ratio, _ = _ratio(draft_ids_ptr, draft_probs_ptr, target_probs_ptr, row, i,
                          num_drafts, vocab_size, HAS_DRAFT_PROBS)
        weight = tl.minimum(weight * ratio, 1.0)
        threshold = weight
        if i + 1 < num_drafts:
            mass = _residual_mass(target_probs_ptr, draft_probs_ptr, draft_ids_ptr, row, i + 1,
                                  weight, num_drafts, vocab_size, HAS_DRAFT_PROBS, BLOCK)
            denominator = mass + (1.0 - weight)
            safe = tl.where(denominator > 0, denominator, 1.0)
            threshold = tl.where(denominator > 0, mass / safe, 1.0)
        success = _uniform(seed, i, request, position, _ACCEPT) < threshold
        accepted = tl.where(success, i + 1, accepted)
        scale = tl.where(success, weight, scale)
    _write_prefix(out_ptr, draft_ids_ptr, row, accepted, num_drafts)
    tl.store(num_accepted_ptr + row, accepted)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _running_argmax(best, best_id, scores, start):
    """Fold one vocabulary block's scores into the running (max, first index of the max):
    ties inside a block go left, and the strict '>' across blocks keeps the earlier block, so
    the result is torch.argmax's first index among ties."""
    block_best, block_id = tl.max(scores, axis=0, return_indices=True,
                                  return_indices_tie_break_left=True)
    better = block_best > best
    return tl.where(better, block_best, best), tl.where(better, start + block_id.to(tl.int64),
                                                         best_id)


@triton.jit
def resample_kernel(num_accepted_ptr, scale_ptr, draft_ids_ptr, draft_probs_ptr,
                    target_probs_ptr, request_ptr, position_ptr, seed, out_ptr, num_drafts,
                    vocab_size, HAS_DRAFT_PROBS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    request, position = tl.load(request_ptr + row), tl.load(position_ptr + row)
    accepted = tl.load(num_accepted_ptr + row)
    scale = tl.load(scale_ptr + row)
    needs_residual = accepted < num_drafts  # else: all kept, bonus draw from target
    draft_limit = tl.where(needs_residual, vocab_size, 0)  # no draft row read for a bonus
    draft_pos = tl.minimum(accepted, tl.maximum(num_drafts - 1, 0))
    target_row = target_probs_ptr + (row * (num_drafts + 1) + accepted) * vocab_size
    draft_row = draft_probs_ptr + (row * num_drafts + draft_pos) * vocab_size
    draft_token = tl.load(draft_ids_ptr + row * num_drafts + draft_pos,
                          mask=num_drafts > 0, other=-1)
    best_residual = tl.full((), -1.0, tl.float64)
    best_residual_id = tl.full((), 0, tl.int64)
    best_target = tl.full((), -1.0, tl.float64)
    best_target_id = tl.full((), 0, tl.int64)
    for start in range(0, vocab_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_vocab = offsets < vocab_size
        target = tl.load(target_row + offsets, mask=in_vocab, other=0.0).to(tl.float64)
        if HAS_DRAFT_PROBS:
            draft = tl.load(draft_row + offsets, mask=offsets < draft_limit, other=0.0)
            draft = draft.to(tl.float64)
        else:
            draft = tl.where((offsets == draft_token) & needs_residual, 1.0, 0.0)
            draft = draft.to(tl.float64)
        noise = _exponential(seed, offsets, request, position, _RESIDUAL)
        residual_score = tl.maximum(scale * target - draft, 0.0) / noise
        target_score = target / noise
        best_residual, best_residual_id = _running_argmax(
            best_residual, best_residual_id, tl.where(in_vocab, residual_score, -1.0), start)
        best_target, best_target_id = _running_argmax(
            best_target, best_target_id, tl.where(in_vocab, target_score, -1.0), start)
    token = tl.where(best_residual > 0, best_residual_id, best_target_id)
    tl.store(out_ptr + row * (num_drafts + 1) + accepted, token)


@triton.jit
def sample_kernel(probs_ptr, request_ptr, position_ptr, seed, stream, out_ptr, vocab_size,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    request, position = tl.load(request_ptr + row), tl.load(position_ptr + row)
    best = tl.full((), -1.0, tl.float64)
    best_id = tl.full((), 0, tl.int64)
    for start in range(0, vocab_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_vocab = offsets < vocab_size
        probs = tl.load(probs_ptr + row * vocab_size + offsets, mask=in_vocab, other=0.0)
        score = probs.to(tl.float64) / _exponential(seed, offsets, request, position, stream)
        best, best_id = _running_argmax(best, best_id, tl.where(in_vocab, score, -1.0), start)
    tl.store(out_ptr + row, best_id)


def _block(vocab: int, block: int) -> int:
    return min(block, triton.next_power_of_2(max(vocab, 1)))


def rejection_sample_triton(draft_token_ids, draft_probs, target_probs, keys: RandomKeys,
                            rule: str = "token", block: int = 1024):
    batch, k = draft_token_ids.shape
    vocab = target_probs.shape[-1]
    device = target_probs.device
    draft_token_ids, target_probs = draft_token_ids.contiguous(), target_probs.contiguous()
    has_draft_probs = draft_probs is not None
    draft_probs = draft_probs.contiguous() if has_draft_probs else target_probs  # unused pointer
    out = torch.empty((batch, k + 1), dtype=torch.long, device=device)
    num_accepted = torch.empty(batch, dtype=torch.long, device=device)
    scale = torch.empty(batch, dtype=torch.float64, device=device)
    requests, positions = keys.request_ids.contiguous(), keys.positions.contiguous()
    common = (draft_token_ids, draft_probs, target_probs, requests, positions, keys.seed, out,
              num_accepted, scale, k, vocab)
    if rule == "block":
        block_accept_kernel[(batch,)](*common, HAS_DRAFT_PROBS=has_draft_probs,
                                      BLOCK=_block(vocab, block), **LAUNCH_OPTIONS)
    else:
        token_accept_kernel[(batch,)](*common, HAS_DRAFT_PROBS=has_draft_probs, **LAUNCH_OPTIONS)
    resample_kernel[(batch,)](num_accepted, scale, draft_token_ids, draft_probs, target_probs,
                              requests, positions, keys.seed, out, k, vocab,
                              HAS_DRAFT_PROBS=has_draft_probs, BLOCK=_block(vocab, block),
                              **LAUNCH_OPTIONS)
    return out


def sample_triton(probs, keys: RandomKeys, stream: int, block: int = 1024):
    batch, vocab = probs.shape
    out = torch.empty(batch, dtype=torch.long, device=probs.device)
    sample_kernel[(batch,)](probs.contiguous(), keys.request_ids.contiguous(),
                            keys.positions.contiguous(), keys.seed, stream, out, vocab,
                            BLOCK=_block(vocab, block), **LAUNCH_OPTIONS)
    return out
