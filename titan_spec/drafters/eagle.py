"""EAGLE-style drafter: one DraftHead (models/heads.py) applied autoregressively on top of the
target's hidden states, sampling from the target's own output head.

Head KV entry at position j comes from (h_{j-1}, x_j), with h the target's final hidden states
that the engine keeps per slot (h_{-1} = 0). Each proposal first re-feeds every committed
position its cache may lack (base.CatchUp) with TRUE target hidden states, overwriting entries
that earlier drafting computed from predicted hidden states; then it drafts k tokens feeding
back its own predicted hidden state, as EAGLE does."""

from __future__ import annotations

import torch

from titan_spec.rollout.sampling import process_logits

from .base import CachedDrafter, DraftRequest, gather_tokens, sample_rows


class EagleDrafter(CachedDrafter):
    name = "eagle"
    needs_target_hidden = True

    def __init__(self, target, head):
        super().__init__(cache_owner=head)
        self.target, self.head = target, head

    def _logits(self, predicted_hidden):
        return torch.nn.functional.linear(predicted_hidden, self.target.output.weight)

    def _feed(self, tokens, positions, slots, attend_len, hidden=None):
        """Head forward at `positions` [B, T] with true target hidden states h_{pos-1}."""
        rows = torch.as_tensor(slots, device=tokens.device).unsqueeze(1)
        previous = hidden[rows, (positions - 1).clamp(min=0)]
        previous = torch.where((positions > 0).unsqueeze(-1), previous, torch.zeros_like(previous))
        return self.head(previous, self.target.tok_embeddings(tokens), positions,
                         self._view(slots, attend_len))

    @torch.no_grad()
    def propose(self, request: DraftRequest):
        device, hidden = request.device, request.extras["hidden"]
        lengths = torch.tensor([len(s) for s in request.sequences], device=device)
        positions = self.catch_up.window(request)
        tokens = gather_tokens(request.sequences, positions)
        attend_len = max(len(s) for s in request.sequences) + request.k
        predicted = self._feed(tokens, positions, request.slots, attend_len, hidden)[:, -1:]
        view = self._view(request.slots, attend_len)
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
