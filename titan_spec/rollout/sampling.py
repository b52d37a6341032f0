"""The ONE logits -> probabilities transform (temperature, top-k, top-p, greedy). The plain
sampler, every drafter and the verifier call this same function, so the target distribution the
rejection sampler preserves is exactly the one plain sampling draws from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from titan_spec.kernels.vocab_shard import UNIT, VocabShard, to_units

# The float32 bit pattern just above 1.0: no processed weight (<= 1) reaches it.
_ABOVE_ONE = int(torch.tensor(1.0).view(torch.int32)) + 1
_BISECTIONS = _ABOVE_ONE.bit_length()  # halvings of [0, _ABOVE_ONE) down to one pattern


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
                   vocab_size: int | None = None, shard: VocabShard | None = None) -> torch.Tensor:
    """logits [..., V] -> float32 probabilities [..., V] after the sampling transform.
    Ids >= vocab_size (a model's padded vocabulary rows) get probability 0. With `shard`, the
    logits hold that shard's columns only and the result is the same columns of the
    single-rank result, bit for bit (kernels/vocab_shard.py).

    probs = e / S with e = exp(scaled - max) (0 outside the top-k / top-p support) and S the sum
    of e in fixed point (2**-40), so that no summation order changes a bit."""
    shard = shard or VocabShard.whole(logits.shape[-1])
    logits = logits.float()
    if vocab_size is not None and vocab_size < shard.stop:
        logits = logits.masked_fill(shard.column_ids(logits.device) >= vocab_size, float("-inf"))
    if sampling.greedy:
        return shard.one_hot(shard.argmax(logits)[1], logits)
    scaled = logits / sampling.temperature
    if sampling.top_k and (sampling.top_k < logits.shape[-1] or not shard.is_whole):
        kth = shard.kth_largest(scaled, sampling.top_k)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    row_max = shard.maximum(scaled.amax(dim=-1, keepdim=True))
    weights = torch.exp(scaled - row_max)
    units = to_units(weights)
    if sampling.top_p < 1.0:
        kept = weights >= top_p_threshold(weights, units, sampling.top_p, shard)
        weights, units = weights * kept, units * kept
    normaliser = shard.total(units.sum(dim=-1, keepdim=True)).double() / UNIT
    return weights / normaliser.float()


def top_p_threshold(weights, units, top_p: float, shard: VocabShard) -> torch.Tensor:
    """The smallest weight kept by top-p [..., 1]: that of the first token, in descending
    order, where the mass reaches top_p. Every token of that weight or more stays (ties at the
    boundary stay together), so the support does not depend on an order among equal weights.

    One rank sorts. Sharded, a rank cannot sort the row, so the threshold is found by bisection
    on the float32 bit pattern of the weight (non-negative floats order as their bits): the mass
    at or above a candidate is one integer all-reduce, and ~30 halvings of [0, 1] find the
    largest candidate whose mass still reaches top_p, which is the same weight."""
    total = shard.total(units.sum(dim=-1, keepdim=True))
    needed = torch.ceil(total.double() * top_p).long()
    if shard.is_whole:
        sorted_weights, order = weights.sort(dim=-1, descending=True)
        reached = units.gather(-1, order).cumsum(dim=-1) >= needed
        first = reached.int().argmax(dim=-1, keepdim=True)
        return sorted_weights.gather(-1, first)
    low = torch.zeros_like(needed, dtype=torch.int32)  # mass at or above weight 0: all of it
    high = torch.full_like(low, _ABOVE_ONE)  # no weight reaches it
    for _ in range(_BISECTIONS):  # the same count on every rank: no host sync
        middle = (low + high) // 2
        candidate = middle.view(torch.float32)
        mass = shard.total((units * (weights >= candidate)).sum(dim=-1, keepdim=True))
        reaches = mass >= needed
        low, high = torch.where(reaches, middle, low), torch.where(reaches, high, middle)
    return low.view(torch.float32)


# fp32 values of one chunk of [positions, vocab] rows in token_logprobs (128 MiB): at vocab
# 151936 a 16k-token sequence's whole fp32 logprobs would be ~10 GB, several times over.
LOGPROB_CHUNK_ELEMENTS = 2 ** 25


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, sampling: SamplingParams,
                   vocab_size: int | None = None,
                   chunk_elements: int = LOGPROB_CHUNK_ELEMENTS) -> torch.Tensor:
    """Differentiable log-probabilities of token_ids [...] under the SAME processed
    distribution process_logits samples from (temperature, then the top-k / top-p support,
    renormalised): the learner's side of the behaviour logprobs. logits [..., V] -> [...].
    Needs temperature > 0 (a greedy policy has no useful gradient).

    Rows are processed in chunks of at most chunk_elements fp32 values, each recomputed in
    backward (activation checkpointing) when it needs a gradient, so the whole [..., V] fp32
    tensor and its softmax never exist; every row's result is the unchunked one, bit for bit
    (each row is computed on its own)."""
    if sampling.greedy:
        raise ValueError("token logprobs need temperature > 0: a greedy policy is one-hot.")
    rows = logits.reshape(-1, logits.shape[-1])
    picked = by_row_chunks(_row_logprobs, (rows, token_ids.reshape(-1)), sampling, vocab_size,
                           width=rows.shape[-1], chunk_elements=chunk_elements)
    return picked.view(token_ids.shape)


def by_row_chunks(fn, row_tensors, *args, width: int,
                  chunk_elements: int = LOGPROB_CHUNK_ELEMENTS) -> torch.Tensor:
    """fn(*rows, *args) over chunks of the rows (first dimension) of row_tensors, each of at
    most chunk_elements / width rows, concatenated. A chunk that needs a gradient is
    recomputed in backward instead of keeping its intermediates."""
    count = row_tensors[0].shape[0]
    per_chunk = max(1, chunk_elements // width)
    if count <= per_chunk:
        return fn(*row_tensors, *args)
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in row_tensors)
    pieces = []
    for start in range(0, count, per_chunk):
        chunk = [t[start:start + per_chunk] for t in row_tensors]
        pieces.append(checkpoint(fn, *chunk, *args, use_reentrant=False) if recompute
                      else fn(*chunk, *args))
    return torch.cat(pieces)


def _row_logprobs(logits, token_ids, sampling: SamplingParams, vocab_size: int | None):
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
