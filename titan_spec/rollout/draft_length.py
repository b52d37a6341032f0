"""Draft length per sequence: each sequence keeps its own budget, which follows its own
acceptance (+2 after a draft accepted whole, -1 after a rejection, between 1 and the ceiling, as
transformers' "heuristic" assistant schedule), and a drafter may stop a sequence's draft early,
at the first drafted token whose draft probability is below `confidence`.

Both are lossless: a draft shorter than the iteration's width is passed to the rejection
sampler with zero draft probabilities past its end. That is a draft over the vocabulary plus a
"stop" symbol the target never emits, so both rules stay exact (the zero rows reject at once,
and the residual there is the target's distribution: the bonus token of the shorter draft);
and a length chosen from the draft's own tokens is part of the draft distribution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "heuristic")


@dataclass(frozen=True)
class DraftLengths:
    schedule: str = "constant"  # constant: every sequence drafts the iteration's k
    confidence: float = 0.0  # stop a draft below this draft probability; 0: never

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"draft schedule {self.schedule!r}: choose one of "
                             f"{', '.join(SCHEDULES)}.")
        if not 0.0 <= self.confidence < 1.0:
            raise ValueError(f"confidence threshold {self.confidence} must be in [0, 1).")

    @property
    def budgeted(self) -> bool:
        """Each sequence drafts at most its own budget."""
        return self.schedule != "constant"

    @property
    def per_sequence(self) -> bool:
        return self.budgeted or self.confidence > 0

    def next_budget(self, budget: int, drafted: int, accepted: int, ceiling: int) -> int:
        """A sequence's budget after a verify step that kept `accepted` of its `drafted`."""
        if not self.budgeted or drafted == 0:
            return budget
        return min(ceiling, budget + 2) if accepted == drafted else max(1, budget - 1)


def keep_drafting(active: torch.Tensor, step: int, limits: torch.Tensor, probs: torch.Tensor,
                  token: torch.Tensor, confidence: float) -> torch.Tensor:
    """Rows that draft position step + 1: still active, under their limit and (with a
    confidence threshold) confident in the token just drafted."""
    active = active & (limits > step + 1)
    if confidence > 0:
        active = active & (probs.gather(-1, token.unsqueeze(-1)).squeeze(-1) >= confidence)
    return active


def drafted_lengths(draft_ids: torch.Tensor, draft_probs: torch.Tensor | None) -> torch.Tensor:
    """Each row's draft length [B]: the positions before its first all-zero draft row."""
    if draft_probs is None:
        return torch.full((draft_ids.shape[0],), draft_ids.shape[1], dtype=torch.long,
                          device=draft_ids.device)
    return (draft_probs.amax(dim=-1) > 0).long().cumprod(dim=1).sum(dim=1)
