"""Distil a draft model from a target: teacher-forced forward KL on the synthetic task.

Each step builds a batch of task sequences (prompt + reference working), runs the target once
under no_grad, and trains the drafter to match the target's next-token distribution at every
completion position (soft cross-entropy = forward KL up to the target's entropy). The drafter
learns what the TARGET would say, which is what acceptance rewards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_spec.data.sft import SFTDataSource
from titan_spec.rollout.sampling import by_row_chunks


def fit(module, steps: int, lr: float, loss_at, log, label: str) -> list:
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


def soft_cross_entropy(target_probs, draft_logits, mask, vocab: int, normaliser=None):
    """Mean (or sum / normaliser) over masked positions of -sum target * log draft: forward KL
    to the target up to the target's entropy. target_probs [B, T, V] carry no gradient."""
    width = target_probs.shape[-1]
    per_position = by_row_chunks(_position_cross_entropy, (
        target_probs.reshape(-1, width), draft_logits.reshape(-1, draft_logits.shape[-1])),
        vocab, width=width).view(target_probs.shape[:-1])
    return (per_position * mask).sum() / (mask.sum() if normaliser is None else normaliser)


def _position_cross_entropy(target_probs, draft_logits, vocab: int):
    draft_log_probs = F.log_softmax(draft_logits[..., :vocab].float(), dim=-1)
    return -(target_probs * draft_log_probs).sum(-1)


def draft_model_loss(draft, inputs, mask, target_probs, vocab: int, normaliser=None):
    """Teacher-forced loss of a draft LM on the target's next-token distributions."""
    return soft_cross_entropy(target_probs, draft(inputs), mask, vocab, normaliser)


def head_chain_loss(heads, inputs, mask, target_probs, hidden, embed, output_weight,
                    vocab: int, feature_weight: float = 0.1, normaliser=None):
    """Teacher-forced loss of a head chain (drafters/eagle.py): head m at position p sees
    (o^{m-1}_{p-1}, x_p), o^0 being the target's TRUE hidden states [B, T, dim] and o^m head
    m's output, and learns the target's distribution of x_{p+1} through the target's (frozen)
    output head, plus a smooth-L1 pull of o^m towards the target's hidden state so that
    feeding back predictions while drafting stays close to the target. `embed` is the target's
    embedding function; hidden, target_probs and output_weight carry no gradient."""
    positions = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    embeds = embed(inputs).detach()
    denominator = mask.sum() if normaliser is None else normaliser
    source, total = hidden, 0.0
    for head in heads:
        previous = torch.cat([torch.zeros_like(source[:, :1]), source[:, :-1]], dim=1)
        predicted = head(previous, embeds, positions)
        head_logits = F.linear(predicted.to(output_weight.dtype), output_weight)
        soft_ce = soft_cross_entropy(target_probs, head_logits, mask, vocab, 1.0)
        feature = F.smooth_l1_loss(predicted, hidden.to(predicted.dtype),
                                   reduction="none").mean(-1)
        total = total + (soft_ce + feature_weight * (feature * mask).sum()) / denominator
        source = predicted
    return total / len(heads)


def distill_draft_model(target, draft, task, tokenizer, steps: int, batch_size: int = 32,
                        seq_len: int = 96, lr: float = 3e-3, seed: int = 0, log=None) -> list:
    data = SFTDataSource(task, tokenizer, batch_size, seq_len, seed=seed + 7919)
    vocab, device = tokenizer.vocab_size, next(draft.parameters()).device
    target.eval()

    def loss_at(step):
        batch = data.global_batch(step)
        inputs, mask = batch.inputs.to(device), batch.mask.to(device)
        with torch.no_grad():
            target_probs = F.softmax(target(inputs)[..., :vocab].float(), dim=-1)
        return draft_model_loss(draft, inputs, mask, target_probs, vocab)

    return fit(draft, steps, lr, loss_at, log, "distil draft model")


def distill_eagle_head(target, head, task, tokenizer, steps: int, **kwargs) -> list:
    """EAGLE: a chain of one head (see distill_heads)."""
    return distill_heads(target, [head], task, tokenizer, steps, **kwargs)


def distill_heads(target, heads, task, tokenizer, steps: int, batch_size: int = 32,
                  seq_len: int = 96, lr: float = 3e-3, seed: int = 0,
                  feature_weight: float = 0.1, log=None) -> list:
    """Teacher-forced training of a head chain on the task (head_chain_loss); heads train
    jointly."""
    data = SFTDataSource(task, tokenizer, batch_size, seq_len, seed=seed + 104729)
    vocab, device = tokenizer.vocab_size, next(heads[0].parameters()).device
    modules = torch.nn.ModuleList(heads)
    target.eval()

    def loss_at(step):
        batch = data.global_batch(step)
        inputs, mask = batch.inputs.to(device), batch.mask.to(device)
        with torch.no_grad():
            logits, hidden = target(inputs, return_hidden=True)
            target_probs = F.softmax(logits[..., :vocab].float(), dim=-1)
        return head_chain_loss(heads, inputs, mask, target_probs, hidden,
                               target.tok_embeddings, target.output.weight.detach(), vocab,
                               feature_weight)

    return fit(modules, steps, lr, loss_at, log, f"distil {len(heads)} head(s)")
