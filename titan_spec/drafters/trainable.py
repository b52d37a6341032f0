"""Learnable drafters: the trainable module behind a drafter kind, and the one teacher-forced
loss used both to warm-start it (distillation on the task) and to adapt it online during RL
(on rollout batches, from the learner's detached logits and hidden states)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import build_drafter
from .base import Drafter
from .distill import distill_draft_model, distill_heads, draft_model_loss, head_chain_loss

LEARNABLE = ("draft_model", "eagle", "mtp")


@dataclass
class TrainableDrafter:
    kind: str
    module: nn.Module  # every trainable parameter (a draft LM, or a ModuleList of heads)
    drafter: Drafter  # what the rollout engine calls

    @property
    def heads(self) -> list | None:
        return None if self.kind == "draft_model" else list(self.module)

    def bind(self, target: nn.Module) -> None:
        """Head drafters read the target's embedding and output head: point them at the
        module that verifies this rollout phase."""
        if self.heads is not None:
            self.drafter.target = target

    def loss(self, inputs, mask, target_probs, hidden, target, vocab: int, normaliser=None):
        """inputs [B, T], mask [B, T], target_probs [B, T, V] and hidden [B, T, dim] from the
        target's forward, all without gradient; only the drafter's parameters get one."""
        if self.heads is None:
            return draft_model_loss(self.module, inputs, mask, target_probs, vocab, normaliser)
        return head_chain_loss(self.heads, inputs, mask, target_probs, hidden.detach(),
                               target.tok_embeddings, target.output.weight.detach(), vocab,
                               normaliser=normaliser)

    def distill(self, target, task, tokenizer, steps: int, **kwargs) -> list:
        if self.heads is None:
            return distill_draft_model(target, self.module, task, tokenizer, steps, **kwargs)
        return distill_heads(target, self.heads, task, tokenizer, steps, **kwargs)


def build_trainable_drafter(kind: str, target, model_name: str = "qwen3", *, seed: int = 0,
                            device="cpu", draft_flavor: str = "debug", draft_layers: int = 1,
                            num_heads: int = 2, head_args=None,
                            draft_args=None) -> TrainableDrafter:
    """target: the policy (its args shape the heads unless head_args gives the full shapes,
    e.g. for a tensor-parallel target); draft_args: the draft model's shape when it does not
    come from draft_flavor (an HF folder's config.json). Parameters are plain and replicated."""
    from titan_spec.models import build_model, build_model_from_args
    from titan_spec.models.heads import build_draft_head

    if kind not in LEARNABLE:
        raise ValueError(f"drafter '{kind}' has no parameters to train; learnable kinds: "
                         f"{', '.join(LEARNABLE)}.")
    if kind == "draft_model":
        overrides = {"n_layers": draft_layers} if draft_layers else {}
        if draft_args is not None:
            model = build_model_from_args(model_name, draft_args, device=device, seed=seed)
        else:
            model = build_model(model_name, draft_flavor, device=device, seed=seed, **overrides)
        if model.args.vocab_size < target.args.vocab_size:
            raise ValueError(f"drafter.draft_model.flavor={draft_flavor} has a smaller vocabulary "
                             f"({model.args.vocab_size}) than the policy "
                             f"({target.args.vocab_size}); pick a flavor with the same one.")
        return TrainableDrafter(kind, model, build_drafter("draft_model", model=model))
    count = 1 if kind == "eagle" else num_heads
    shapes = head_args if head_args is not None else target.args
    heads = nn.ModuleList(build_draft_head(shapes, seed + i, device) for i in range(count))
    parts = {"head": heads[0]} if kind == "eagle" else {"heads": list(heads)}
    return TrainableDrafter(kind, heads, build_drafter(kind, target=target, **parts))
