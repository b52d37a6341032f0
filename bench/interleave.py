"""Arms measured side by side on a drifting machine: every arm once per repeat, in an order
rotated each repeat (so a slow spell hits every arm, and none always runs first), reported as
medians of per-repeat ratios against a baseline arm of the same repeat."""

from __future__ import annotations

from collections.abc import Callable
from statistics import median


def interleaved(arms: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[dict]]:
    """-> each arm's results, one per repeat."""
    names = list(arms)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(arms[name]())
    return runs


def median_ratio(runs: dict[str, list[dict]], arm: str, baseline: str, key: str) -> float:
    return median(a[key] / b[key] for a, b in zip(runs[arm], runs[baseline], strict=True))


def median_of(results: list[dict], key: str) -> float:
    return median(result[key] for result in results)
