"""Pure-PyTorch rejection sampler: the reference the Triton kernels must equal exactly, given the
same random numbers (float64 acceptance uniforms [B, k], exponential noise [B, V]).

Rule (DESIGN.md): accept draft x_i with probability min(1, target(x_i) / draft(x_i)), i.e. when
u_i < target/draft (draft(x_i) = 0 rejects). At the first rejection j emit one token from
normalise(max(0, target_j - draft_j)), or from target_j when that residual is all zero; if all k
are accepted emit a bonus token from target_k. A categorical draw is the exponential race
argmax(probs / noise), which needs no normalisation."""

from __future__ import annotations

import torch


def acceptance(draft_token_ids, draft_probs, target_probs, uniforms) -> torch.Tensor:
    """-> number of accepted drafts per row [B] (int64)."""
    k = draft_token_ids.shape[1]
    ids = draft_token_ids.unsqueeze(-1)
    target_at_draft = target_probs[:, :k].gather(-1, ids).squeeze(-1).double()
    if draft_probs is None:  # deterministic drafter: draft distribution is one-hot
        draft_at_draft = torch.ones_like(target_at_draft)
    else:
        draft_at_draft = draft_probs.gather(-1, ids).squeeze(-1).double()
    safe_draft = torch.where(draft_at_draft > 0, draft_at_draft, torch.ones_like(draft_at_draft))
    accepted = (draft_at_draft > 0) & (uniforms < target_at_draft / safe_draft)
    return accepted.int().cumprod(dim=1).sum(dim=1)


def resample(num_accepted, draft_token_ids, draft_probs, target_probs, noise) -> torch.Tensor:
    """The token emitted after the accepted prefix of each row: residual or bonus -> [B]."""
    batch, k = draft_token_ids.shape
    rows = torch.arange(batch, device=target_probs.device)
    target_row = target_probs[rows, num_accepted]  # [B, V]
    is_bonus = (num_accepted == k).unsqueeze(-1)
    if k == 0:
        draft_row = torch.zeros_like(target_row)
    elif draft_probs is None:
        draft_ids = draft_token_ids[rows, num_accepted.clamp(max=k - 1)]
        draft_row = torch.zeros_like(target_row).scatter_(-1, draft_ids.unsqueeze(-1), 1.0)
    else:
        draft_row = draft_probs[rows, num_accepted.clamp(max=k - 1)]
    draft_row = torch.where(is_bonus, torch.zeros_like(draft_row), draft_row.float())
    residual = (target_row.float() - draft_row).clamp(min=0.0)
    residual_score = residual / noise
    target_score = target_row.float() / noise
    residual_ids = residual_score.argmax(dim=-1)  # argmax: first index among ties
    best_residual = residual_score.gather(-1, residual_ids.unsqueeze(-1)).squeeze(-1)
    target_ids = target_score.argmax(dim=-1)
    return torch.where(best_residual > 0, residual_ids, target_ids)


def rejection_sample_reference(draft_token_ids, draft_probs, target_probs, uniforms, noise):
    """-> [B, k+1]: accepted drafts, then the residual/bonus token, then -1 padding."""
    batch, k = draft_token_ids.shape
    num_accepted = acceptance(draft_token_ids, draft_probs, target_probs, uniforms)
    out = torch.full((batch, k + 1), -1, dtype=torch.long, device=target_probs.device)
    positions = torch.arange(k + 1, device=target_probs.device).unsqueeze(0)
    padded_drafts = torch.cat([draft_token_ids, out[:, :1]], dim=1)
    out = torch.where(positions < num_accepted.unsqueeze(1), padded_drafts, out)
    extra = resample(num_accepted, draft_token_ids, draft_probs, target_probs, noise)
    return out.scatter_(1, num_accepted.unsqueeze(1), extra.unsqueeze(1))
