"""The ONE logits -> probabilities transform (temperature, top-k, top-p, greedy). The plain
sampler, every drafter and the verifier call this same function, so the target distribution the
rejection sampler preserves is exactly the one plain sampling draws from."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k truncation
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off).")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process_logits(logits: torch.Tensor, sampling: SamplingParams,
                   vocab_size: int | None = None) -> torch.Tensor:
    """logits [..., V] -> float32 probabilities [..., V] after the sampling transform.
    Ids >= vocab_size (a model's padded vocabulary rows) get probability 0."""
    logits = logits.float()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits.clone()
        logits[..., vocab_size:] = float("-inf")
    if sampling.greedy:
        greedy_ids = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, greedy_ids, 1.0)
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass
        # before it is still below top_p.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs



def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, sampling: SamplingParams,
                   vocab_size: int | None = None) -> torch.Tensor:
    """Differentiable log-probabilities of token_ids [...] under the SAME processed
    distribution process_logits samples from (temperature, then the top-k / top-p support,
    renormalised): the learner's side of the behaviour logprobs. logits [..., V] -> [...].
    Needs temperature > 0 (a greedy policy has no useful gradient)."""
    if sampling.greedy:
        raise ValueError("token logprobs need temperature > 0: a greedy policy is one-hot.")
    logits = logits.float()
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    scaled = logits / sampling.temperature
    if sampling.top_k or sampling.top_p < 1.0:
        with torch.no_grad():
            outside = process_logits(logits, sampling) == 0
        scaled = scaled.masked_fill(outside, float("-inf"))
    picked = torch.log_softmax(scaled, dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    # A token outside the support (possible after an update) gets a finite floor, no gradient.
    return picked.clamp(min=-1e4)
