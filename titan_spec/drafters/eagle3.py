"""EAGLE-3 drafter: one Eagle3Head (models/eagle3.py) on the target's fused three-layer
features, applied autoregressively to its own outputs (the head-chain machinery of eagle.py:
per-slot KV cache and output buffers, committed positions re-fed from true inputs).

Its draft distribution lives on the head's reduced vocabulary and is mapped into the target's
exactly (drafters/base.py protocol: draft_probs [B, k, V]), so tokens outside the draft
vocabulary have draft probability 0 and the rejection sampler stays lossless."""

from __future__ import annotations

from titan_spec.rollout.sampling import process_logits

from .eagle import EagleDrafter


class Eagle3Drafter(EagleDrafter):
    """EAGLE's one head applied autoregressively, reading fused features through `fc` and
    drafting over the head's own vocabulary."""

    name = "eagle3"

    @property
    def target_hidden_layers(self) -> tuple[int, ...]:
        """The target layers whose outputs the engine keeps per position (the features)."""
        return self.head.shape.aux_layers

    def _hidden_input(self, index: int, previous):
        return self.head.project(previous)

    def _draft_probs(self, predicted, request):
        logits = self.head.draft_logits(predicted).float()
        # Draft ids mapped past the sampled vocabulary (a padded target row) get no mass; no
        # host check first, which would be a sync on every draft step.
        logits = logits.masked_fill(self.head.target_ids() >= request.vocab_size, float("-inf"))
        probs = process_logits(logits, request.sampling)
        return self.head.to_target_vocab(probs, request.vocab_size)
