"""Draft-model drafter: a small causal LM sharing the target's tokenizer, with its own KV cache.

Each proposal first re-feeds the committed positions its cache may lack (base.CatchUp): after a
proposal only positions < n are trusted, so the next one re-feeds from there, which covers
rejected drafts, all-accepted-plus-bonus steps and iterations that drafted nothing."""

from __future__ import annotations

import torch

from titan_spec.rollout.kv_cache import KVCache
from titan_spec.rollout.sampling import process_logits

from .base import CatchUp, Drafter, DraftRequest, gather_tokens, sample_rows


class DraftModelDrafter(Drafter):
    name = "draft_model"

    def __init__(self, model):
        self.model = model
        self.cache: KVCache | None = None
        self.catch_up = CatchUp()

    def start(self, max_batch_size, max_seq_len, device):
        dtype = next(self.model.parameters()).dtype
        self.cache = KVCache.for_model(self.model, max_batch_size, max_seq_len, dtype=dtype,
                                       device=device)

    def stop(self):
        self.cache = None

    @torch.no_grad()
    def prefill(self, slots, prompts):
        for slot, prompt in zip(slots, prompts, strict=True):
            self.catch_up.reset(slot, len(prompt) - 1)
        longest = max(len(p) for p in prompts) - 1
        if longest <= 0:
            return
        device = self.cache.key_positions.device
        tokens = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt) - 1] = torch.tensor(prompt[:-1], device=device)
        positions = torch.arange(longest, device=device).expand(len(prompts), longest)
        slot_ids = torch.tensor(slots, device=device)
        self.model(tokens, positions, kv_cache=self.cache.view(slot_ids, longest))

    @torch.no_grad()
    def propose(self, request: DraftRequest):
        device = request.device
        lengths = torch.tensor([len(s) for s in request.sequences], device=device)
        positions = self.catch_up.window(request)
        slots = torch.tensor(request.slots, device=device)
        longest = max(len(s) for s in request.sequences)
        view = self.cache.view(slots, longest + request.k)
        tokens = gather_tokens(request.sequences, positions)
        logits = self.model(tokens, positions, kv_cache=view)[:, -1]
        draft_ids, draft_probs = [], []
        for i in range(request.k):
            probs = process_logits(logits, request.params, request.vocab_size)
            token = sample_rows(probs, request.generators)
            draft_ids.append(token)
            draft_probs.append(probs)
            if i + 1 < request.k:
                logits = self.model(token.unsqueeze(1), (lengths + i).unsqueeze(1),
                                    kv_cache=view)[:, -1]
        return torch.stack(draft_ids, dim=1), torch.stack(draft_probs, dim=1)
