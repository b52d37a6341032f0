"""The SFT phase: next-token cross-entropy on the task's reference solutions, through the
learner's one forward/backward and optimizer step. Batches are global and deterministic in
(seed, step): every rank builds the step's batch and trains on its data-parallel slice."""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

from titan_spec.comm import all_reduce_dp
from titan_spec.components.metrics import memory_record


def token_loss_sum(logits, targets, mask) -> torch.Tensor:
    """Sum over valid tokens of the next-token cross-entropy (float32)."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (losses * mask.flatten()).sum()


def _sft_loss(targets, mask, global_tokens, logits):
    loss_sum = token_loss_sum(logits, targets, mask)
    return loss_sum / global_tokens, loss_sum.detach()


def sft_step(learner, data, step: int, pad_id: int) -> dict:
    start = time.perf_counter()
    device, dims = learner.device, learner.dims
    global_batch = data.global_batch(step)
    per_rank = data.global_batch_size // dims.dp
    local = global_batch.slice(dims.dp_rank() * per_rank, (dims.dp_rank() + 1) * per_rank)
    # Every rank holds the global batch, so the normaliser needs no communication.
    global_tokens = global_batch.mask.sum().clamp(min=1)
    accum = learner.accum_steps
    micro = local.inputs.shape[0] // accum
    loss_sum = torch.zeros((), device=device)
    learner.model.train()
    for i in range(accum):
        mb = local.slice(i * micro, (i + 1) * micro)
        loss_of = functools.partial(_sft_loss, mb.targets.to(device), mb.mask.to(device),
                                    global_tokens.to(device))
        _, mb_loss_sum = learner.forward_backward(mb.inputs.to(device), loss_of,
                                                  accum * dims.dp)
        loss_sum += mb_loss_sum
    lr = learner.lr
    grad_norm = learner.optim_step()
    loss_value = (all_reduce_dp(dims, loss_sum) / global_tokens.to(loss_sum.device)).item()
    elapsed = time.perf_counter() - start
    tokens = int((global_batch.inputs != pad_id).sum())
    return {"step": step, "phase": "sft", "loss": loss_value, "grad_norm": grad_norm,
            "lr": lr, "tokens_per_s": tokens / elapsed, "step_time_s": elapsed,
            **memory_record(device)}

