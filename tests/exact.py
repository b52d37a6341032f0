"""Helpers of the rollout tests: prompts of several lengths and the exact distribution of short
continuations, enumerated with full forwards (what a lossless sampler must reproduce)."""

import itertools

import torch

from titan_spec.rollout.sampling import process_logits

PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 3, 3, 3, 3, 4], [1, 2, 3], [1, 40, 41]]


def exact_sequence_probs(model, prompt, length, params, vocab):
    """P(every continuation of `length` tokens), enumerated with full forwards."""
    outcomes = list(itertools.product(range(vocab), repeat=length))
    seqs = torch.tensor([prompt + list(o) for o in outcomes])
    with torch.no_grad():
        probs = process_logits(model(seqs)[..., :vocab], params)
    start = len(prompt) - 1
    picked = probs[:, start:start + length].gather(-1, seqs[:, len(prompt):].unsqueeze(-1))
    return picked.squeeze(-1).prod(dim=1), outcomes


def outcome_samples(completions, outcomes) -> torch.Tensor:
    """Each completion's index in `outcomes` (the enumeration of exact_sequence_probs)."""
    index = {o: i for i, o in enumerate(outcomes)}
    return torch.tensor([index[tuple(c.token_ids)] for c in completions])
