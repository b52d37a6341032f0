"""The drafter protocol. A drafter proposes k tokens per running sequence (and the exact
distribution it sampled them from, or None for deterministic drafters); the engine verifies
them with one target forward. Drafters with a KV cache manage it per engine slot."""

from __future__ import annotations

import torch

from titan_spec.kernels.counter_rng import DRAFT
from titan_spec.kernels.rejection_sampler import sample
from titan_spec.rollout.draft_length import keep_drafting
from titan_spec.rollout.draft_request import DraftRequest  # noqa: F401  (the protocol's input)
from titan_spec.rollout.kv_cache import KVCache, prefill_batch


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


class CatchUp:
    """Per-slot count of leading positions whose drafter KV entries are known to be right.

    Drafters with their own cache re-feed every committed position from there on each
    proposal. That covers tokens committed in iterations where no drafting happened (adaptive
    k = 0) and entries written from drafts that were later rejected."""

    def __init__(self):
        self.fed: dict[int, int] = {}

    def reset(self, slot: int, fed: int) -> None:
        self.fed[slot] = fed

    def window(self, request: "DraftRequest") -> torch.Tensor:
        """Positions [B, W] to re-feed: the last W committed positions of every row, W the
        largest gap (right-aligned; rows with smaller gaps re-write correct entries, which is
        idempotent; positions clamp at 0 for short rows)."""
        lengths = [len(s) for s in request.sequences]
        width = max(n - self.fed[slot] for n, slot in zip(lengths, request.slots, strict=True))
        lengths_t = torch.tensor(lengths, device=request.device).unsqueeze(1)
        offsets = torch.arange(-max(width, 1), 0, device=request.device)
        for slot, n in zip(request.slots, lengths, strict=True):
            self.fed[slot] = n  # after this proposal, positions < n hold committed tokens
        return (lengths_t + offsets).clamp(min=0)


class CachedDrafter(Drafter):
    """A drafter with its own per-slot KV cache, sized from `cache_owner` (a module with
    `.args`), kept consistent by CatchUp. Subclasses implement `_feed`."""

    def __init__(self, cache_owner):
        self.cache_owner = cache_owner
        self.cache: KVCache | None = None
        self.catch_up = CatchUp()

    def start(self, max_batch_size, max_seq_len, device):
        dtype = next(self.cache_owner.parameters()).dtype
        self.cache = KVCache.for_model(self.cache_owner, max_batch_size, max_seq_len,
                                       dtype=dtype, device=device)

    def stop(self):
        self.cache = None

    def _view(self, slots: list[int], attend_len: int):
        return self.cache.view(list(slots), attend_len)

    def _feed(self, tokens, positions, slots, attend_len, hidden=None):
        """Forward [B, T] tokens at positions into the cache -> per-position outputs."""
        raise NotImplementedError

    @torch.no_grad()
    def prefill(self, slots, prompts, hidden=None):
        for slot, prompt in zip(slots, prompts, strict=True):
            self.catch_up.reset(slot, len(prompt) - 1)
        batch = prefill_batch(prompts, self.cache.key_positions.device)
        if batch is not None:
            self._feed(batch[0], batch[1], slots, batch[0].shape[1], hidden)


def gather_tokens(sequences: list[list[int]], positions: torch.Tensor) -> torch.Tensor:
    """tokens[b, i] = sequences[b][positions[b, i]]."""
    rows = [[seq[p] for p in row] for seq, row in zip(sequences, positions.tolist(), strict=True)]
    return torch.tensor(rows, dtype=torch.long, device=positions.device)


def sample_rows(probs: torch.Tensor, request: DraftRequest, step: int) -> torch.Tensor:
    """Draft step `step`'s draw for every row of probs [B, V], from the rows' own keys."""
    return sample(probs, request.keys, DRAFT + step)


def draft_autoregressive(request: DraftRequest, state, probs_of, advance):
    """The drafting loop of the autoregressive drafters: at step i, probs_of(state) -> the
    draft distribution [B, V], a draw from it, then advance(state, token, i) -> the next state.
    Rows past their limit or below the confidence threshold get zero rows from there on, and
    the loop ends when no row drafts on (rollout/draft_length.py) -> (ids [B, n], probs
    [B, n, V]), n <= k."""
    limits = request.limit_tensor() if request.per_row else None
    active = limits > 0 if limits is not None else None
    draft_ids, draft_probs = [], []
    for i in range(request.k):
        probs = probs_of(state)
        token = sample_rows(probs, request, i)
        draft_ids.append(token)
        if active is None:
            draft_probs.append(probs)
        else:
            draft_probs.append(probs * active.unsqueeze(-1))
            active = keep_drafting(active, i, limits, probs, token, request.confidence)
        if i + 1 == request.k or (active is not None and not bool(active.any())):
            break  # the stop check reads the device once per draft step (per-row mode only)
        state = advance(state, token, i)
    return torch.stack(draft_ids, dim=1), torch.stack(draft_probs, dim=1)
