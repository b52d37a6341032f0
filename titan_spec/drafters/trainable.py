"""Learnable drafters: the trainable module behind a drafter kind, and the one teacher-forced
loss used both to warm-start it (distillation on the task) and to adapt it online during RL
(on rollout batches, from the learner's detached logits and hidden states)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import build_drafter
from .base import Drafter
from .distill import distill_draft_model, distill_heads, draft_model_loss, head_chain_loss
from .ttt import distill_eagle3, ttt_loss

LEARNABLE = ("draft_model", "eagle", "eagle3", "mtp")


@dataclass
class TrainableDrafter:
    kind: str
    module: nn.Module  # every trainable parameter (a draft LM, or a ModuleList of heads)
    drafter: Drafter  # what the rollout engine calls
    ttt_steps: int = 1  # eagle3: training-time test depth

    @property
    def heads(self) -> list | None:
        return None if self.kind == "draft_model" else list(self.module)

    def bind(self, target: nn.Module) -> None:
        """Head drafters read the target's embedding and output head: point them at the
        module that verifies this rollout phase."""
        if self.heads is not None:
            self.drafter.target = target

    @property
    def hidden_layers(self) -> tuple[int, ...] | None:
        """The target layers the loss's `hidden` must hold (None: the final hidden state)."""
        return getattr(self.drafter, "target_hidden_layers", None)

    def loss(self, inputs, mask, target_probs, hidden, target, vocab: int, normaliser=None):
        """inputs [B, T], mask [B, T], target_probs [B, T, V] and hidden [B, T, dim] (eagle3:
        the hidden_layers' outputs) from the target's forward, all without gradient; only the
        drafter's parameters get one."""
        if self.heads is None:
            return draft_model_loss(self.module, inputs, mask, target_probs, vocab, normaliser)
        if self.kind == "eagle3":
            return ttt_loss(self.module[0], inputs, mask, target_probs, hidden,
                            target.tok_embeddings, self.ttt_steps, normaliser=normaliser)
        return head_chain_loss(self.heads, inputs, mask, target_probs, hidden.detach(),
                               target.tok_embeddings, target.output.weight.detach(), vocab,
                               normaliser=normaliser)

    def distill(self, target, task, tokenizer, steps: int, **kwargs) -> list:
        if self.heads is None:
            return distill_draft_model(target, self.module, task, tokenizer, steps, **kwargs)
        if self.kind == "eagle3":
            return distill_eagle3(target, self.module[0], task, tokenizer, steps,
                                  self.ttt_steps, **kwargs)
        return distill_heads(target, self.heads, task, tokenizer, steps, **kwargs)


def build_trainable_drafter(kind: str, target, model_name: str = "qwen3", *, seed: int = 0,
                            device="cpu", draft_flavor: str = "debug", draft_layers: int = 1,
                            num_heads: int = 2, head_args=None, draft_args=None,
                            eagle3=None, eagle3_spec=None) -> TrainableDrafter:
    """target: the policy (its args shape the heads unless head_args gives the full shapes,
    e.g. for a tensor-parallel target); draft_args: the draft model's shape when it does not
    come from draft_flavor (an HF folder's config.json); eagle3: the [drafter.eagle3] table;
    eagle3_spec: (block args, Eagle3Shape) of a published head to load. Parameters are plain
    and replicated."""
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
    shapes = head_args if head_args is not None else target.args
    if kind == "eagle3":
        head = _eagle3_head(shapes, seed, device, eagle3, eagle3_spec)
        return TrainableDrafter(kind, nn.ModuleList([head]),
                                build_drafter("eagle3", target=target, head=head),
                                eagle3.ttt_steps if eagle3 is not None else 1)
    count = 1 if kind == "eagle" else num_heads
    heads = nn.ModuleList(build_draft_head(shapes, seed + i, device) for i in range(count))
    parts = {"head": heads[0]} if kind == "eagle" else {"heads": list(heads)}
    return TrainableDrafter(kind, heads, build_drafter(kind, target=target, **parts))


def _eagle3_head(target_args, seed: int, device, cfg, spec):
    from titan_spec.config.validate import parse_aux_layers
    from titan_spec.models.eagle3 import Eagle3Head, build_eagle3_head
    from titan_spec.models.init import materialize_and_init

    if spec is not None:  # a published head's shape: its weights are loaded next
        with torch.device("meta"):
            head = Eagle3Head(*spec)
        return materialize_and_init(head, torch.device(device), seed)
    layers = parse_aux_layers(cfg.aux_layers) if cfg is not None else None
    return build_eagle3_head(target_args, seed, device,
                             (cfg.draft_vocab_size or None) if cfg is not None else None, layers)
