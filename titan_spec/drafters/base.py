"""The drafter protocol. A drafter proposes k tokens per running sequence (and the exact
distribution it sampled them from, or None for deterministic drafters); the engine verifies
them with one target forward. Drafters with a KV cache manage it per engine slot."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftRequest:
    """What a drafter sees each iteration (one row per running sequence)."""

    slots: list[int]  # engine slot of each row
    sequences: list[list[int]]  # committed tokens (prompt + generated) of each row
    group_ids: list  # GRPO group of each row (rows of one prompt share it)
    k: int  # tokens to propose per row
    params: object  # SamplingParams: drafters sample from the same processed distribution
    generators: list[torch.Generator]  # per-row draft random stream
    vocab_size: int
    device: torch.device
    extras: dict = field(default_factory=dict)


class Drafter:
    name = "base"

    def start(self, max_batch_size: int, max_seq_len: int, device) -> None:
        """Allocate per-slot state for one generate() call."""

    def prefill(self, slots: list[int], prompts: list[list[int]]) -> None:
        """New sequences entered these slots."""

    def propose(self, request: DraftRequest):
        """-> (draft_token_ids [B, k] long, draft_probs [B, k, V] float32 or None)."""
        raise NotImplementedError

    def finish(self, slot: int, tokens: list[int], group_id) -> None:
        """A sequence in `slot` ended with these committed tokens."""

    def stop(self) -> None:
        """Free per-call state (KV caches)."""


def sample_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One draw per row of probs [B, V], row b from generators[b] (exponential race)."""
    noise = torch.stack([torch.empty(probs.shape[-1], device=probs.device)
                         .exponential_(generator=g) for g in generators])
    return (probs / noise.clamp(min=torch.finfo(torch.float32).tiny)).argmax(dim=-1)
