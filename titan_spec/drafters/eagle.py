"""Drafters made of DraftHeads (models/heads.py) on top of the target's hidden states, sampling
through the target's own output head.

A chain of D heads: head m (1-based) at position p reads (o^{m-1}_{p-1}, x_p), where o^0 = h is
the target's final hidden state (kept per slot by the engine) and o^m is head m's output, and
predicts x_{p+1}. Draft i uses head min(i, D): with D = 1 that is EAGLE (one head applied
autoregressively to its own predicted hidden state); with D > 1 it is DeepSeek-V3-style
multi-token prediction, head m trained for depth m.

Each proposal first re-feeds every committed position the caches may lack (base.CatchUp), head
by head, from TRUE inputs (target hidden states, then the previous head's re-fed outputs kept
in per-head buffers), overwriting entries that drafting computed from predictions."""

from __future__ import annotations

import torch

from titan_spec.rollout.kv_cache import KVCache, prefill_batch
from titan_spec.rollout.sampling import process_logits

from .base import CatchUp, Drafter, DraftRequest, draft_autoregressive, gather_tokens


class HeadChainDrafter(Drafter):
    needs_target_hidden = True

    def __init__(self, target, heads: list):
        if not heads:
            raise ValueError("a head-chain drafter needs at least one draft head.")
        self.target, self.heads = target, list(heads)
        self.caches: list[KVCache] = []
        self.outputs: list[torch.Tensor] = []  # per head: [slots, max_seq_len, dim]
        self.catch_up = CatchUp()

    def start(self, max_batch_size, max_seq_len, device):
        for head in self.heads:
            dtype = next(head.parameters()).dtype
            self.caches.append(KVCache.for_model(head, max_batch_size, max_seq_len, dtype=dtype,
                                                 device=device))
            self.outputs.append(torch.zeros((max_batch_size, max_seq_len, head.args.dim),
                                            dtype=dtype, device=device))

    def stop(self):
        self.caches, self.outputs = [], []

    def _logits(self, predicted_hidden):
        weight = self.target.output.weight  # the target's head, in the target's dtype
        return torch.nn.functional.linear(predicted_hidden.to(weight.dtype), weight)

    def _draft_probs(self, predicted, request):
        """The processed draft distribution [B, V] after a head's output [B, dim]."""
        return process_logits(self._logits(predicted), request.sampling, request.vocab_size)

    def _hidden_input(self, index: int, previous):
        """What head `index` reads for position p from the source at p - 1 (the target's
        hidden state, or the previous head's output)."""
        return previous

    def _embed(self, tokens):
        return self.target.tok_embeddings(tokens)

    def _feed_all(self, tokens, positions, slots, attend_len, hidden):
        """Re-feed committed positions [B, W] through every head -> head 1's outputs."""
        slot_ids = torch.as_tensor(slots, device=tokens.device)
        rows, previous_index = slot_ids.unsqueeze(1), (positions - 1).clamp(min=0)
        first = None
        for index, head in enumerate(self.heads):
            source = hidden if index == 0 else self.outputs[index - 1]
            previous = torch.where((positions > 0).unsqueeze(-1), source[rows, previous_index],
                                   torch.zeros((), dtype=source.dtype, device=source.device))
            out = head(self._hidden_input(index, previous), self._embed(tokens), positions,
                       self.caches[index].view(list(slots), attend_len))
            self.outputs[index][rows, positions] = out
            first = out if first is None else first
        return first

    @torch.no_grad()
    def prefill(self, slots, prompts, hidden=None):
        for slot, prompt in zip(slots, prompts, strict=True):
            self.catch_up.reset(slot, len(prompt) - 1)
        batch = prefill_batch(prompts, hidden.device)
        if batch is not None:
            self._feed_all(batch[0], batch[1], slots, batch[0].shape[1], hidden)

    @torch.no_grad()
    def propose(self, request: DraftRequest):
        device = request.device
        lengths = torch.tensor([len(s) for s in request.sequences], device=device)
        positions = self.catch_up.window(request)
        tokens = gather_tokens(request.sequences, positions)
        attend_len = max(len(s) for s in request.sequences) + request.k
        predicted = self._feed_all(tokens, positions, request.slots, attend_len,
                                   request.extras["hidden"])[:, -1:]

        def advance(predicted, token, i):
            index = min(i + 1, len(self.heads) - 1)
            view = self.caches[index].view(list(request.slots), attend_len)
            return self.heads[index](predicted, self._embed(token.unsqueeze(1)),
                                     (lengths + i).unsqueeze(1), view)

        return draft_autoregressive(
            request, predicted, lambda predicted: self._draft_probs(predicted[:, -1], request),
            advance)


class EagleDrafter(HeadChainDrafter):
    """One head, applied autoregressively (EAGLE)."""

    name = "eagle"

    def __init__(self, target, head):
        super().__init__(target, [head])

    @property
    def head(self):
        return self.heads[0]


class MtpDrafter(HeadChainDrafter):
    """One head per draft depth (DeepSeek-V3 / Qwen3-Next multi-token prediction); drafts
    deeper than the number of heads reuse the last head."""

    name = "mtp"
