"""Online drafter adaptation during RL: the drafter keeps up with the policy it drafts for.

The drafter trains on each rollout batch from the learner's own forward (the logprob recompute):
its target distributions and hidden states are DETACHED, so no gradient can reach the policy.
It has its own AdamW and gradient clipping. Its parameters are replicated on every rank;
gradients are summed over data-parallel ranks with the loss normalised by the global number of
completion tokens, so every replica takes the same step."""

from __future__ import annotations

import logging
import math

import torch

from titan_spec import comm

log = logging.getLogger("titan_spec")


class OnlineDrafter:
    def __init__(self, trainable, cfg, dp_group=None):
        self.trainable, self.cfg, self.dp_group = trainable, cfg, dp_group
        self.params = [p for p in trainable.module.parameters() if p.requires_grad]
        # What the learner's forward must return as `hidden` (EAGLE-3: three layers' outputs).
        self.hidden_layers = trainable.hidden_layers
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self._loss_sum = None

    def begin(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.trainable.module.train()
        self._loss_sum = torch.zeros(())

    def accumulate(self, batch, start: int, stop: int, logits, hidden, target, vocab: int,
                   global_tokens: float) -> None:
        """Add one chunk's loss gradient (logits/hidden come from a no-grad forward)."""
        target_probs = torch.softmax(logits[..., :vocab].float().detach(), dim=-1)
        loss = self.trainable.loss(batch.inputs[start:stop], batch.mask[start:stop],
                                   target_probs, hidden.detach(), target, vocab,
                                   normaliser=global_tokens)
        loss.backward()
        self._loss_sum += loss.detach().cpu()

    def step(self) -> dict:
        flat = [p.grad for p in self.params if p.grad is not None]
        loss = self._loss_sum.clone()
        if self.dp_group is not None:
            packed = torch.cat([g.reshape(-1) for g in flat] + [loss.to(flat[0].device).view(1)])
            comm.all_reduce(packed, group=self.dp_group)
            offset = 0
            for grad in flat:
                grad.copy_(packed[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()
            loss = packed[-1].cpu()
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.trainable.module.eval()
        return {"drafter_loss": float(loss), "drafter_grad_norm": float(grad_norm)}


def check_acceptance(rates: list[float], threshold: float, kind: str) -> bool:
    """Loud warning when the first draft position's acceptance has collapsed: a stale or
    broken drafter makes speculation pure overhead (and silently so in most RL stacks)."""
    if not rates or rates[0] >= threshold:
        return False
    log.warning("!" * 72)
    log.warning("DRAFTER ACCEPTANCE COLLAPSED: %s drafter, position-0 acceptance %.3f < "
                "drafter.collapse_threshold=%.3f. Speculation now costs time and gains "
                "nothing. Check drafter.online / drafter.lr, or set drafter.kind=none.",
                kind, rates[0], threshold)
    log.warning("!" * 72)
    return True
