"""Distil a draft model from a target: teacher-forced forward KL on the synthetic task.

Each step builds a batch of task sequences (prompt + reference working), runs the target once
under no_grad, and trains the drafter to match the target's next-token distribution at every
completion position (soft cross-entropy = forward KL up to the target's entropy). The drafter
learns what the TARGET would say, which is what acceptance rewards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_spec.data.sft import SFTDataSource


def _fit(module, steps: int, lr: float, loss_at, log, label: str) -> list:
    """AdamW with 10-step warm-up and linear decay, clipped at 1.0, on `loss_at(step)`."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * max(0.1, 1 - step / steps))
    losses = []
    module.train()
    for step in range(1, steps + 1):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log is not None and (step % 50 == 0 or step == steps):
            log(f"{label} step {step}/{steps} loss {loss.item():.4f}")
    module.eval()
    return losses


def distill_draft_model(target, draft, task, tokenizer, steps: int, batch_size: int = 32,
                        seq_len: int = 96, lr: float = 3e-3, seed: int = 0, log=None) -> list:
    data = SFTDataSource(task, tokenizer, batch_size, seq_len, seed=seed + 7919)
    vocab, device = tokenizer.vocab_size, next(draft.parameters()).device
    target.eval()

    def loss_at(step):
        batch = data.global_batch(step)
        inputs, mask = batch.inputs.to(device), batch.loss_mask.to(device)
        with torch.no_grad():
            target_log_probs = F.log_softmax(target(inputs)[..., :vocab].float(), dim=-1)
        draft_log_probs = F.log_softmax(draft(inputs)[..., :vocab].float(), dim=-1)
        soft_ce = -(target_log_probs.exp() * draft_log_probs).sum(-1)
        return (soft_ce * mask).sum() / mask.sum()

    return _fit(draft, steps, lr, loss_at, log, "distil draft model")


def distill_eagle_head(target, head, task, tokenizer, steps: int, **kwargs) -> list:
    """EAGLE: a chain of one head (see distill_heads)."""
    return distill_heads(target, [head], task, tokenizer, steps, **kwargs)


def distill_heads(target, heads, task, tokenizer, steps: int, batch_size: int = 32,
                  seq_len: int = 96, lr: float = 3e-3, seed: int = 0,
                  feature_weight: float = 0.1, log=None) -> list:
    """Teacher-forced training of a head chain (drafters/eagle.py): head m at position p sees
    (o^{m-1}_{p-1}, x_p), with o^0 the target's TRUE hidden states and o^m head m's output, and
    learns the target's distribution of x_{p+1} (soft cross-entropy through the frozen target
    head) plus a smooth-L1 pull of o^m towards the target's hidden state, so that feeding back
    predictions while drafting stays close to the target. Heads train jointly."""
    data = SFTDataSource(task, tokenizer, batch_size, seq_len, seed=seed + 104729)
    vocab, device = tokenizer.vocab_size, next(heads[0].parameters()).device
    modules = torch.nn.ModuleList(heads)
    target.eval()

    def loss_at(step):
        batch = data.global_batch(step)
        inputs, mask = batch.inputs.to(device), batch.loss_mask.to(device)
        with torch.no_grad():
            logits, hidden = target(inputs, return_hidden=True)
            target_probs = F.softmax(logits[..., :vocab].float(), dim=-1)
            embeds = target.tok_embeddings(inputs)
        positions = torch.arange(inputs.shape[1], device=device).expand_as(inputs)
        source, total = hidden, 0.0
        for head in heads:
            previous = torch.cat([torch.zeros_like(source[:, :1]), source[:, :-1]], dim=1)
            predicted = head(previous, embeds, positions)
            # The target's head is frozen here: gradients reach the draft heads only.
            head_logits = F.linear(predicted, target.output.weight.detach())
            head_log_probs = F.log_softmax(head_logits[..., :vocab].float(), dim=-1)
            soft_ce = -(target_probs * head_log_probs).sum(-1)
            feature = F.smooth_l1_loss(predicted, hidden, reduction="none").mean(-1)
            total = total + ((soft_ce + feature_weight * feature) * mask).sum() / mask.sum()
            source = predicted
        return total / len(heads)

    return _fit(modules, steps, lr, loss_at, log, f"distil {len(heads)} head(s)")
