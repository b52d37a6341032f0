"""Rollout-vs-learner correction: per-token importance weights pi_learner / pi_behaviour, and
the figures that say how far the two sides are apart.

The rollout side samples from its own forward (KV cache, verify shapes, its kernels); the
learner recomputes the same tokens with a full-sequence forward. In fp32 on CPU they agree to
~1e-6; in bf16 on a GPU to ~1e-3 on average and O(0.1-1) on rare tokens, so samples are
slightly off-policy even at lag 0. rl.rollout_is corrects for that at every lag:

- none: no correction at lag 0 (weight 1); lagged async samples keep their off-policy weight
  min(ratio, async_rl.is_cap);
- tis: truncated IS, min(ratio, rl.rollout_is_cap), on every token;
- mis: masked IS, the ratio where rl.rollout_is_floor <= ratio <= rl.rollout_is_cap, 0 (the
  token leaves the loss) outside.

Percentiles of |logp_behaviour - logp_learner| come from a histogram over log10 |gap| summed
over the data-parallel ranks (never a gather of every token): each is exact to one bin, a
factor of 10**(1 / BINS_PER_DECADE)."""

from __future__ import annotations

import torch

from titan_spec.comm import dp_max, dp_sum

MODES = ("none", "tis", "mis")
LOW_DECADE, HIGH_DECADE, BINS_PER_DECADE = -9, 2, 20
BINS = (HIGH_DECADE - LOW_DECADE) * BINS_PER_DECADE + 1  # bin 0: |gap| < 10**LOW_DECADE
# The share of tokens whose ratio leaves this band is reported (GPU_REVIEW's suggestion).
RATIO_BAND = (0.8, 1.25)


def is_weights(learner_logprobs, behaviour_logprobs, mask, lags, mode: str, cap: float,
               floor: float, lag_cap: float):
    """-> (weights [N, L], cut [N, L] bool: tokens truncated at a cap or masked out), both 0
    off the mask, or (None, None) when nothing is weighted (mode none in a synchronous job).
    lags [N] (None: synchronous, every sample at lag 0)."""
    ratio = (learner_logprobs - behaviour_logprobs).exp()
    on = mask > 0
    if mode == "tis":
        return ratio.clamp(max=cap) * mask, (ratio > cap) & on
    if mode == "mis":
        inside = (ratio >= floor) & (ratio <= cap)
        return torch.where(inside, ratio, torch.zeros_like(ratio)) * mask, ~inside & on
    if lags is None:
        return None, None
    lagged = (lags > 0).to(ratio.device).unsqueeze(1)
    weights = torch.where(lagged, ratio.clamp(max=lag_cap), torch.ones_like(ratio)) * mask
    return weights, lagged & (ratio > lag_cap) & on


def _bins(gap: torch.Tensor) -> torch.Tensor:
    decades = torch.log10(gap.double().clamp(min=10.0 ** (LOW_DECADE - 1)))
    index = torch.ceil((decades - LOW_DECADE) * BINS_PER_DECADE).long() + 1
    return index.clamp(0, BINS - 1)


def _upper_edge(index: int) -> float:
    """The largest |gap| bin `index` holds."""
    return 10.0 ** (LOW_DECADE + (index - 1) / BINS_PER_DECADE) if index > 0 \
        else 10.0 ** LOW_DECADE


def _percentile(counts: list[float], share: float) -> float:
    total, running = sum(counts), 0.0
    if total == 0:
        return 0.0
    for index, count in enumerate(counts):
        running += count
        if running >= share * total:
            return _upper_edge(index)
    return _upper_edge(len(counts) - 1)


def mismatch_record(learner_logprobs, behaviour_logprobs, mismatch_mask, weights, cut, mask,
                    dims, device) -> dict:
    """Over every dp rank (a collective over them): mismatch percentiles, KL(behaviour ||
    learner) and the share of ratios outside RATIO_BAND on the tokens of `mismatch_mask` (the
    on-policy ones: a lagged sample also differs by the policy's change); the weights'
    figures on the tokens of `mask`."""
    on = mismatch_mask > 0
    log_ratio = (learner_logprobs - behaviour_logprobs)[on].double()
    ratio = log_ratio.exp()
    # k3 with r = pi_learner / pi_behaviour on tokens drawn from the behaviour policy:
    # unbiased for KL(behaviour || learner) and >= 0 per token.
    kl = ratio - 1 - log_ratio
    outside = (ratio < RATIO_BAND[0]) | (ratio > RATIO_BAND[1])
    counts = torch.bincount(_bins(log_ratio.abs()), minlength=BINS).double().tolist()
    sums = [float(log_ratio.numel()), float(kl.sum()), float(outside.sum()), float(ratio.sum())]
    # the ratio's largest and smallest value (as a max of its negative)
    maxima = [float(ratio.max()), float(-ratio.min())] if ratio.numel() else [0.0, 0.0]
    if weights is not None:
        kept = weights[mask > 0].double()
        sums += [float(kept.numel()), float(kept.sum()), float(cut.sum())]
        maxima.append(float(kept.max()) if kept.numel() else 0.0)
    totals = dp_sum(dims, sums + counts, device)
    maxima = dp_max(dims, maxima, device)
    tokens, counts = max(totals[0], 1.0), totals[len(sums):]
    record = {"logprob_mismatch_p50": _percentile(counts, 0.5),
              "logprob_mismatch_p99": _percentile(counts, 0.99),
              "behaviour_kl": totals[1] / tokens, "ratio_outside_band_fraction": totals[2] / tokens,
              # pi_learner / pi_behaviour: what rl.rollout_is = tis | mis would weigh by
              "rollout_ratio_mean": totals[3] / tokens, "rollout_ratio_max": maxima[0],
              "rollout_ratio_min": -maxima[1]}
    if weights is not None:
        weighted = max(totals[4], 1.0)
        record.update(is_weight_mean=totals[5] / weighted, is_weight_max=maxima[2],
                      is_clipped_fraction=totals[6] / weighted)
    return record
