"""The counter-based generator: values are functions of (seed, element, request, position,
stream) only, uniform / exponential in distribution, and the streams do not repeat each other."""

import pytest
import torch

from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.kernels.counter_rng import (
    ACCEPT,
    DRAFT,
    RESIDUAL,
    RandomKeys,
    exponentials,
    uniforms,
)


def test_values_depend_on_the_key_only():
    keys = RandomKeys.of(123, [5, 9, 5], [7, 7, 7])
    values = uniforms(keys, 6, ACCEPT)
    assert torch.equal(values[0], values[2])  # same request and position, other batch row
    alone = uniforms(RandomKeys.of(123, [9], [7]), 6, ACCEPT)
    assert torch.equal(alone[0], values[1])
    for other in (RandomKeys.of(124, [9], [7]), RandomKeys.of(123, [10], [7]),
                  RandomKeys.of(123, [9], [8])):
        assert not torch.equal(uniforms(other, 6, ACCEPT)[0], values[1])
    assert not torch.equal(uniforms(keys, 6, RESIDUAL), values)
    assert not torch.equal(exponentials(keys, 6, DRAFT), exponentials(keys, 6, DRAFT + 1))


def test_uniforms_and_exponentials_have_their_distributions():
    keys = RandomKeys.of(2**50 + 3, range(200), [11] * 200)
    values = uniforms(keys, 1000, ACCEPT).flatten()
    assert values.dtype == torch.float64 and values.min() >= 0 and values.max() < 1
    bins = (values * 20).long()
    assert chi_square_p_value(bins, torch.full((20,), 0.05)) > P_VALUE_FLOOR
    noise = exponentials(keys, 1000, RESIDUAL).flatten()
    assert noise.min() > 0
    n = noise.numel()
    assert abs(noise.mean() - 1) < 5 / n**0.5 and abs(noise.var() - 1) < 15 / n**0.5
    quantile_bins = (1 - torch.exp(-noise)).mul(20).long()  # Exp(1) CDF: uniform again
    assert chi_square_p_value(quantile_bins, torch.full((20,), 0.05)) > P_VALUE_FLOOR


def test_bad_seed_is_explained():
    with pytest.raises(ValueError, match="seed=-1"):
        RandomKeys.of(-1, [0], [0])
