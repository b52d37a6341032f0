"""Buckets of context length for acceptance statistics: drafters decay on long rollouts, and a
mean over a whole step hides it. Bucket 0 holds contexts of 1-32 tokens, bucket i > 0 those of
32 * 2**(i-1) + 1 to 32 * 2**i, the last one everything longer."""

from __future__ import annotations

NUM_BUCKETS = 12
_FIRST = 32


def context_bucket(length: int) -> int:
    return min(((max(length, 1) - 1) // _FIRST).bit_length(), NUM_BUCKETS - 1)


def bucket_label(index: int) -> str:
    if index == 0:
        return f"1-{_FIRST}"
    low = _FIRST * 2 ** (index - 1) + 1
    return f"{low}+" if index == NUM_BUCKETS - 1 else f"{low}-{2 * (low - 1)}"


def rates_by_context(accepted: list, drafted: list) -> dict[str, float]:
    """{bucket label: accepted / drafted} for the buckets that saw drafts."""
    return {bucket_label(i): a / d for i, (a, d) in enumerate(zip(accepted, drafted,
                                                                  strict=True)) if d}
