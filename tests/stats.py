"""Chi-square goodness of fit without scipy."""

from __future__ import annotations

import torch

# Each test asserts p-value > 1e-6: with ~40 statistical checks in the suite the chance of a
# false failure on a correct sampler is below 1e-4 per run.
P_VALUE_FLOOR = 1e-6


def chi_square_p_value(samples: torch.Tensor, probs: torch.Tensor,
                       min_expected: float = 0.0) -> float:
    """samples: token ids [N]; probs [V]. Zero-probability tokens must never occur. Bins
    expected to hold fewer than `min_expected` samples are pooled into one (the chi-square
    approximation needs a few expected counts per bin)."""
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, f"sampled zero-probability tokens {counts[~support]}"
    expected = probs.double()[support] * samples.numel()
    counts = counts[support]
    small = expected < min_expected
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = expected.numel() - 1
    if dof == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         statistic / 2))


def two_sample_p_value(counts_a: torch.Tensor, counts_b: torch.Tensor) -> float:
    """Chi-square test of homogeneity: were two histograms over the same bins drawn from one
    distribution? Bins empty in both samples are dropped."""
    table = torch.stack([counts_a.double(), counts_b.double()])
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    dof = table.shape[1] - 1
    if dof == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         statistic / 2))
