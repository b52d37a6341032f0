"""What the rollout engine hands a drafter each iteration. It lives with the engine (the
drafters depend on the rollout package, never the other way round)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from titan_spec.kernels.counter_rng import RandomKeys


@dataclass
class DraftRequest:
    """What a drafter sees each iteration (one row per running sequence)."""

    slots: list[int]  # engine slot of each row
    sequences: list[list[int]]  # committed tokens (prompt + generated) of each row
    group_ids: list  # GRPO group of each row (rows of one prompt share it)
    k: int  # tokens to propose per row (at most; see limits)
    sampling: object  # SamplingParams: drafters sample from the same processed distribution
    keys: RandomKeys  # the rows' counter-based random keys (draft step j: stream DRAFT + j)
    vocab_size: int
    device: torch.device
    extras: dict = field(default_factory=dict)
    # Per-row draft lengths (rollout/draft_length.py): at most limits[b] <= k tokens for row b,
    # and a row stops after a drafted token whose draft probability is below `confidence`. A
    # stochastic drafter returns zero draft probabilities past a row's end (and may return
    # fewer than k columns when every row stopped); a deterministic one may ignore both.
    limits: list[int] | None = None
    confidence: float = 0.0

    @property
    def per_row(self) -> bool:
        return self.limits is not None or self.confidence > 0

    def limit_tensor(self) -> torch.Tensor:
        limits = self.limits if self.limits is not None else [self.k] * len(self.slots)
        return torch.tensor(limits, dtype=torch.long, device=self.device)
