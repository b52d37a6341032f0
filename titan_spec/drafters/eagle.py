"""EAGLE-style drafter: one DraftHead (models/heads.py) applied autoregressively on top of the
target's hidden states, sampling from the target's own output head.

Head KV entry at position j comes from (h_{j-1}, x_j), with h the target's final hidden states
that the engine keeps per slot (h_{-1} = 0). Each proposal first re-feeds every committed
position its cache may lack (base.CatchUp) with TRUE target hidden states, overwriting entries
that earlier drafting computed from predicted hidden states; then it drafts k tokens feeding
back its own predicted hidden state, as EAGLE does."""

from __future__ import annotations

import torch

from titan_spec.rollout.kv_cache import KVCache
from titan_spec.rollout.sampling import process_logits

from .base import CatchUp, Drafter, DraftRequest, gather_tokens, sample_rows


class EagleDrafter(Drafter):
    name = "eagle"
    needs_target_hidden = True

    def __init__(self, target, head):
        self.target, self.head = target, head
        self.cache: KVCache | None = None
        self.catch_up = CatchUp()

    def start(self, max_batch_size, max_seq_len, device):
        dtype = next(self.head.parameters()).dtype
        self.cache = KVCache.for_model(self.head, max_batch_size, max_seq_len, dtype=dtype,
                                       device=device)

    def stop(self):
        self.cache = None

    def _logits(self, predicted_hidden):
        return torch.nn.functional.linear(predicted_hidden, self.target.output.weight)

    def _feed(self, tokens, positions, slots, hidden, attend_len):
        """Head forward at `positions` [B, T] with true target hidden states h_{pos-1}."""
        rows = torch.as_tensor(slots, device=tokens.device).unsqueeze(1)
        previous = hidden[rows, (positions - 1).clamp(min=0)]
        previous = torch.where((positions > 0).unsqueeze(-1), previous, torch.zeros_like(previous))
        view = self.cache.view(torch.as_tensor(slots, device=tokens.device), attend_len)
        return self.head(previous, self.target.tok_embeddings(tokens), positions, view)

    @torch.no_grad()
    def prefill(self, slots, prompts, hidden=None):
        for slot, prompt in zip(slots, prompts, strict=True):
            self.catch_up.reset(slot, len(prompt) - 1)
        longest = max(len(p) for p in prompts) - 1
        if longest <= 0:
            return
        device = hidden.device
        tokens = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt) - 1] = torch.tensor(prompt[:-1], device=device)
        positions = torch.arange(longest, device=device).expand(len(prompts), longest)
        self._feed(tokens, positions, slots, hidden, longest)

    @torch.no_grad()
    def propose(self, request: DraftRequest):
        device, hidden = request.device, request.extras["hidden"]
        lengths = torch.tensor([len(s) for s in request.sequences], device=device)
        positions = self.catch_up.window(request)
        tokens = gather_tokens(request.sequences, positions)
        longest = max(len(s) for s in request.sequences)
        predicted = self._feed(tokens, positions, request.slots, hidden,
                               longest + request.k)[:, -1:]
        view = self.cache.view(torch.as_tensor(request.slots, device=device),
                               longest + request.k)
        draft_ids, draft_probs = [], []
        for i in range(request.k):
            probs = process_logits(self._logits(predicted[:, -1]), request.params,
                                   request.vocab_size)
            token = sample_rows(probs, request.generators)
            draft_ids.append(token)
            draft_probs.append(probs)
            if i + 1 < request.k:
                position = (lengths + i).unsqueeze(1)
                predicted = self.head(predicted, self.target.tok_embeddings(token.unsqueeze(1)),
                                      position, view)
        return torch.stack(draft_ids, dim=1), torch.stack(draft_probs, dim=1)
