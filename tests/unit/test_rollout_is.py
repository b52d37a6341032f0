"""Rollout-vs-learner correction (rl/rollout_is.py): truncated and masked importance weights at
every lag, and the mismatch figures (histogram percentiles within one bin of the exact ones,
KL(behaviour || learner) equal to the exact divergence in expectation)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from titan_spec.rl.rollout_is import BINS_PER_DECADE, is_weights, mismatch_record

ONE_RANK = SimpleNamespace(dp_group=lambda: None)  # the reductions' one-rank case


def _logprobs(seed=0, shape=(8, 64), scale=0.3):
    generator = torch.Generator().manual_seed(seed)
    learner = -torch.rand(shape, generator=generator) * 3
    return learner, learner + scale * torch.randn(shape, generator=generator)


def test_tis_truncates_and_mis_masks_at_lag_zero_too():
    learner, behaviour = _logprobs()
    mask = torch.ones_like(learner)
    mask[:, -5:] = 0
    ratio = (learner - behaviour).exp()
    tis, tis_cut = is_weights(learner, behaviour, mask, None, "tis", 1.5, 0.5, 9.0)
    assert torch.equal(tis, ratio.clamp(max=1.5) * mask)
    assert torch.equal(tis_cut, (ratio > 1.5) & (mask > 0))
    mis, mis_cut = is_weights(learner, behaviour, mask, None, "mis", 1.5, 0.7, 9.0)
    inside = (ratio >= 0.7) & (ratio <= 1.5)
    assert torch.equal(mis, torch.where(inside, ratio, 0.0) * mask)
    assert torch.equal(mis_cut, ~inside & (mask > 0)) and mis_cut.any()
    assert is_weights(learner, behaviour, mask, None, "none", 1.5, 0.7, 9.0) == (None, None)


def test_mismatch_percentiles_kl_and_clipped_fraction():
    learner, behaviour = _logprobs(scale=0.05)
    mask = torch.ones_like(learner)
    weights, cut = is_weights(learner, behaviour, mask, None, "tis", 1.05, 0.5, 9.0)
    record = mismatch_record(learner, behaviour, mask, weights, cut, mask, ONE_RANK, "cpu")
    gap = (learner - behaviour).abs().numpy().ravel()
    bin_factor = 10 ** (1 / BINS_PER_DECADE)
    for share, key in ((0.5, "logprob_mismatch_p50"), (0.99, "logprob_mismatch_p99")):
        exact = float(np.quantile(gap, share))
        assert exact <= record[key] <= exact * bin_factor * 1.0001, (key, exact, record[key])
    log_ratio = (learner - behaviour).double()
    assert record["behaviour_kl"] == pytest.approx(float((log_ratio.exp() - 1 - log_ratio)
                                                         .mean()), rel=1e-9)
    assert record["is_clipped_fraction"] == pytest.approx(float(cut.double().mean()))
    assert record["is_weight_max"] == pytest.approx(1.05)
    ratio = log_ratio.exp()
    assert record["ratio_outside_band_fraction"] == pytest.approx(
        float(((ratio < 0.8) | (ratio > 1.25)).double().mean()))


def test_behaviour_kl_estimates_the_divergence_of_two_distributions():
    """Tokens drawn from a behaviour distribution; the k3 figure converges to the exact
    KL(behaviour || learner) of the two categorical distributions."""
    generator = torch.Generator().manual_seed(3)
    behaviour_dist = torch.softmax(torch.randn(50, generator=generator), -1)
    learner_dist = torch.softmax(torch.log(behaviour_dist) + 0.2 * torch.randn(
        50, generator=generator), -1)
    tokens = torch.multinomial(behaviour_dist, 200_000, replacement=True, generator=generator)
    behaviour, learner = behaviour_dist.log()[tokens][None], learner_dist.log()[tokens][None]
    mask = torch.ones_like(learner)
    record = mismatch_record(learner, behaviour, mask, None, None, mask, ONE_RANK, "cpu")
    exact = float((behaviour_dist * (behaviour_dist.log() - learner_dist.log())).sum())
    assert record["behaviour_kl"] == pytest.approx(exact, rel=0.05)
    assert "is_weight_mean" not in record


def test_ratio_figures_without_weights():
    learner, behaviour = _logprobs(scale=0.05)
    mask = torch.ones_like(learner)
    record = mismatch_record(learner, behaviour, mask, None, None, mask, ONE_RANK, "cpu")
    ratio = (learner - behaviour).double().exp()
    assert record["rollout_ratio_mean"] == pytest.approx(float(ratio.mean()))
    assert record["rollout_ratio_max"] == pytest.approx(float(ratio.max()))
    assert record["rollout_ratio_min"] == pytest.approx(float(ratio.min()))
