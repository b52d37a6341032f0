"""Rollout results as training tensors, and the learner's logprob recompute.

A sample is prompt + completion; the model reads `inputs` = tokens[:-1] and is scored on
`targets` = tokens[1:]. `mask` is 1 where the target is a completion token, which is also where
the behaviour logprobs (from the rollout's target distribution) live."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from titan_spec.data.sft import shift_and_mask
from titan_spec.rollout.sampling import token_logprobs


@dataclass
class RolloutBatch:
    inputs: torch.Tensor  # [N, L] long
    targets: torch.Tensor  # [N, L] long
    mask: torch.Tensor  # [N, L] float, 1 on completion tokens
    behaviour_logprobs: torch.Tensor  # [N, L] (0 off the mask)
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    policy_versions: torch.Tensor  # [N] long: policy version that generated each sample
    drafter_versions: torch.Tensor  # [N] long: drafter version that proposed its drafts
    old_logprobs: torch.Tensor | None = None  # [N, L] learner recompute (ratio denominator)
    ref_logprobs: torch.Tensor | None = None  # [N, L] reference policy (KL)
    is_weights: torch.Tensor | None = None  # [N, L] IS weights (rl/rollout_is.py)
    is_cut: torch.Tensor | None = None  # [N, L] bool: tokens whose weight was truncated / masked

    def slice(self, start: int, stop: int) -> "RolloutBatch":
        return RolloutBatch(**{f.name: None if getattr(self, f.name) is None
                               else getattr(self, f.name)[start:stop] for f in fields(self)})


def assemble(prompts: list[list[int]], completions, pad_id: int, device) -> tuple:
    """-> inputs, targets, mask, behaviour_logprobs, each [N, L] with L = longest sample - 1."""
    sequences = [p + c.token_ids for p, c in zip(prompts, completions, strict=True)]
    inputs, targets, mask = shift_and_mask(sequences, [len(p) for p in prompts], pad_id)
    behaviour = torch.zeros(mask.shape)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        behaviour[row, len(prompt) - 1: len(prompt) - 1 + len(completion.token_ids)] = \
            torch.tensor(completion.logprobs)
    return tuple(t.to(device) for t in (inputs, targets, mask, behaviour))


def chunks(count: int, parts: int):
    """[(start, stop)] of `parts` near-equal consecutive slices of range(count), so nothing
    vocabulary-sized is held for the whole batch at once."""
    size = -(-count // parts)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def learner_logprobs(logits, batch: RolloutBatch, start: int, stop: int, sampling,
                     vocab_size: int) -> torch.Tensor:
    return token_logprobs(logits, batch.targets[start:stop], sampling, vocab_size) \
        * batch.mask[start:stop]


def logprob_mismatch(behaviour: torch.Tensor, learner: torch.Tensor, mask: torch.Tensor):
    """-> (sum of |behaviour - learner| over the mask, max of it, token count)."""
    gap = (behaviour - learner).abs() * mask
    return gap.sum(), gap.max() if gap.numel() else gap.new_zeros(()), mask.sum()
