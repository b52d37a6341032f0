"""Pure-PyTorch rejection sampler: the reference the Triton kernels must equal exactly, given the
same random numbers (float64 acceptance uniforms [B, k], float64 exponential noise [B, V]).

Two lossless rules choose how many drafts to keep (DESIGN.md):

- token (Leviathan et al. 2023): accept draft x_i when u_i < target(x_i) / draft(x_i)
  (draft(x_i) = 0 rejects), stop at the first rejection j, then draw from
  normalise(max(0, target_j - draft_j)), or from target_j when that residual is all zero.
- block (Sun et al., "Block Verification Accelerates Speculative Decoding", ICLR 2025): with
  p_0 = 1 and p_i = min(1, p_{i-1} target(x_i) / draft(x_i)), the residual mass
  Z_i = sum_x max(0, p_i target_i(x) - draft_i(x)) and h_i = Z_i / (Z_i + 1 - p_i) for i < k
  (1 when that denominator is 0), h_k = p_k; keep the LAST i with u_i < h_i (0 if none), then
  draw from normalise(max(0, p_tau target_tau - draft_tau)). Its expected number of accepted
  drafts is at least the token rule's for every target / draft pair, averaged over the drafts;
  for a particular draft block it can be lower (h_i depends on the drafts after x_i), so no
  coupling of the random numbers makes it larger block by block.

If all k drafts are kept, a bonus token is drawn from target_k. A categorical draw is the
exponential race argmax(weights / noise), which needs no normalisation. The residual masses are
summed in fixed point (2**-40) so that any summation order gives the same bits.

Every reduction along the vocabulary goes through a VocabShard (vocab_shard.py), so the same
functions verify vocabulary-sharded rows under tensor parallelism, bit-equal to one rank."""

from __future__ import annotations

import torch

from .vocab_shard import UNIT, VocabShard

RULES = ("token", "block")
MASS_SCALE = UNIT  # fixed-point unit of the block rule's residual mass


def _probs_at_drafts(draft_token_ids, draft_probs, target_probs, shard):
    """-> (target(x_i), draft(x_i)) as float64 [B, k]; a deterministic drafter's draft is 1."""
    k = draft_token_ids.shape[1]
    target_at_draft = shard.at(target_probs[:, :k], draft_token_ids).double()
    if draft_probs is None:
        return target_at_draft, torch.ones_like(target_at_draft)
    return target_at_draft, shard.at(draft_probs, draft_token_ids).double()


def _ratios(target_at_draft, draft_at_draft):
    safe_draft = torch.where(draft_at_draft > 0, draft_at_draft, torch.ones_like(draft_at_draft))
    return torch.where(draft_at_draft > 0, target_at_draft / safe_draft,
                       torch.zeros_like(target_at_draft))


def _draft_row(draft_token_ids, draft_probs, rows, index, like, shard):
    """Draft distribution [B, V] float64 at draft index `index` [B] (one-hot if deterministic)."""
    if draft_probs is None:
        return shard.one_hot(draft_token_ids[rows, index], like.double())
    return draft_probs[rows, index].double()


def token_acceptance(draft_token_ids, draft_probs, target_probs, uniforms, shard=None):
    """-> (accepted drafts per row [B] int64, residual scale [B] float64 = 1)."""
    shard = shard or VocabShard.whole(target_probs.shape[-1])
    ratios = _ratios(*_probs_at_drafts(draft_token_ids, draft_probs, target_probs, shard))
    accepted = (uniforms < ratios).int().cumprod(dim=1).sum(dim=1).long()
    return accepted, torch.ones(accepted.shape, dtype=torch.float64, device=accepted.device)


def residual_mass(scale, target_row, draft_row, shard=None):
    """sum_x max(0, scale * target(x) - draft(x)) per row, summed in fixed point."""
    terms = (scale.unsqueeze(-1) * target_row.double() - draft_row).clamp(min=0.0)
    units = (terms * MASS_SCALE).long().sum(dim=-1)
    return (shard.total(units) if shard is not None else units).double() / MASS_SCALE


def block_acceptance(draft_token_ids, draft_probs, target_probs, uniforms, shard=None):
    """-> (accepted drafts per row [B] int64, residual scale p_tau [B] float64)."""
    shard = shard or VocabShard.whole(target_probs.shape[-1])
    batch, k = draft_token_ids.shape
    ratios = _ratios(*_probs_at_drafts(draft_token_ids, draft_probs, target_probs, shard))
    rows = torch.arange(batch, device=target_probs.device)
    weight = torch.ones(batch, dtype=torch.float64, device=target_probs.device)
    accepted = torch.zeros(batch, dtype=torch.long, device=target_probs.device)
    scale = weight.clone()
    for i in range(k):
        weight = torch.minimum(weight * ratios[:, i], torch.ones_like(weight))
        if i + 1 < k:
            index = torch.full_like(rows, i + 1)
            mass = residual_mass(weight, target_probs[:, i + 1],
                                 _draft_row(draft_token_ids, draft_probs, rows, index,
                                            target_probs[:, 0], shard), shard)
            denominator = mass + (1.0 - weight)
            threshold = torch.where(denominator > 0, mass / denominator, torch.ones_like(mass))
        else:
            threshold = weight
        success = uniforms[:, i] < threshold
        accepted = torch.where(success, i + 1, accepted)
        scale = torch.where(success, weight, scale)
    return accepted, scale


def resample(num_accepted, scale, draft_token_ids, draft_probs, target_probs, noise,
             shard=None):
    """The token emitted after the kept prefix of each row: residual or bonus -> [B]."""
    shard = shard or VocabShard.whole(target_probs.shape[-1])
    batch, k = draft_token_ids.shape
    rows = torch.arange(batch, device=target_probs.device)
    target_row = target_probs[rows, num_accepted].double()  # [B, V]
    if k == 0:
        draft_row = torch.zeros_like(target_row)
    else:
        draft_row = _draft_row(draft_token_ids, draft_probs, rows,
                               num_accepted.clamp(max=k - 1), target_row, shard)
    draft_row = torch.where((num_accepted == k).unsqueeze(-1), torch.zeros_like(draft_row),
                            draft_row)
    residual = (scale.unsqueeze(-1) * target_row - draft_row).clamp(min=0.0)
    best_residual, residual_ids = shard.argmax(residual / noise)  # first index among ties
    target_ids = shard.argmax(target_row / noise)[1]
    return torch.where(best_residual > 0, residual_ids, target_ids)


def rejection_sample_reference(draft_token_ids, draft_probs, target_probs, uniforms, noise,
                               rule: str = "token", shard: VocabShard | None = None):
    """-> [B, k+1]: kept drafts, then the residual/bonus token, then -1 padding. With `shard`,
    the probabilities and the noise hold that shard's columns (global ids in and out)."""
    batch, k = draft_token_ids.shape
    accept = {"token": token_acceptance, "block": block_acceptance}[rule]
    num_accepted, scale = accept(draft_token_ids, draft_probs, target_probs, uniforms, shard)
    out = torch.full((batch, k + 1), -1, dtype=torch.long, device=target_probs.device)
    positions = torch.arange(k + 1, device=target_probs.device).unsqueeze(0)
    padded_drafts = torch.cat([draft_token_ids, out[:, :1]], dim=1)
    out = torch.where(positions < num_accepted.unsqueeze(1), padded_drafts, out)
    extra = resample(num_accepted, scale, draft_token_ids, draft_probs, target_probs, noise,
                     shard)
    return out.scatter_(1, num_accepted.unsqueeze(1), extra.unsqueeze(1))


def sample_reference(probs, noise):
    """One categorical draw per row of probs [B, V] (exponential race, float64)."""
    return (probs.double() / noise).argmax(dim=-1)
