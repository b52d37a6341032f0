"""Draft-model drafter: a small causal LM sharing the target's tokenizer, with its own KV cache.

Each proposal first re-feeds the committed positions its cache may lack (base.CatchUp): after a
proposal only positions < n are trusted, so the next one re-feeds from there, which covers
rejected drafts, all-accepted-plus-bonus steps and iterations that drafted nothing."""

from __future__ import annotations

import torch

from titan_spec.rollout.sampling import process_logits

from .base import CachedDrafter, DraftRequest, draft_autoregressive, gather_tokens


class DraftModelDrafter(CachedDrafter):
    name = "draft_model"

    def __init__(self, model):
        super().__init__(cache_owner=model)
        self.model = model

    def _feed(self, tokens, positions, slots, attend_len, hidden=None):
        return self.model(tokens, positions, kv_cache=self._view(slots, attend_len))

    @torch.no_grad()
    def propose(self, request: DraftRequest):
        device = request.device
        lengths = torch.tensor([len(s) for s in request.sequences], device=device)
        positions = self.catch_up.window(request)
        attend_len = max(len(s) for s in request.sequences) + request.k
        tokens = gather_tokens(request.sequences, positions)
        logits = self._feed(tokens, positions, request.slots, attend_len)[:, -1]

        def advance(_, token, i):
            return self._feed(token.unsqueeze(1), (lengths + i).unsqueeze(1), request.slots,
                              attend_len)[:, -1]

        return draft_autoregressive(
            request, logits,
            lambda logits: process_logits(logits, request.sampling, request.vocab_size), advance)
