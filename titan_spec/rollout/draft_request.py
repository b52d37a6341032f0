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
    k: int  # tokens to propose per row
    sampling: object  # SamplingParams: drafters sample from the same processed distribution
    keys: RandomKeys  # the rows' counter-based random keys (draft step j: stream DRAFT + j)
    vocab_size: int
    device: torch.device
    extras: dict = field(default_factory=dict)
