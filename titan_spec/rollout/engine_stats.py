"""The rollout engine's counters for one generate() call (RolloutEngine.last_stats): tokens,
drafts kept per draft position and per context-length bucket, time drafting and verifying."""

from __future__ import annotations

from .context_buckets import NUM_BUCKETS, context_bucket


def new_stats(max_k: int, kv_cache_bytes: int) -> dict:
    return {"iterations": 0, "sequence_steps": 0, "tokens": 0, "drafted": 0, "accepted": 0,
            "accepted_per_position": [0] * max_k, "drafted_per_position": [0] * max_k,
            "accepted_per_context": [0] * NUM_BUCKETS, "drafted_per_context": [0] * NUM_BUCKETS,
            "kv_cache_bytes": kv_cache_bytes, "time_draft_s": 0.0, "time_verify_s": 0.0,
            # Adaptive k's k = 0 probes: what plain decoding would have taken for the tokens
            # of the iterations timed against it (rollout speed-up = the ratio of the two).
            "plain_equivalent_s": 0.0, "compared_s": 0.0}


def count_verify(stats: dict, context_len: int, drafted: int, accepted: int) -> None:
    """One sequence's verify step: `accepted` of its `drafted` tokens kept."""
    bucket = context_bucket(context_len)
    stats["drafted_per_context"][bucket] += drafted
    stats["accepted_per_context"][bucket] += accepted
    stats["drafted"] += drafted
    stats["accepted"] += accepted
    for position in range(drafted):
        stats["drafted_per_position"][position] += 1
        stats["accepted_per_position"][position] += int(position < accepted)


def count_against_plain(stats: dict, plain_iteration_s: float | None, batch_size: int,
                        tokens: int, elapsed_s: float) -> None:
    """An iteration that emitted `tokens` for `batch_size` sequences in `elapsed_s`, where a
    plain iteration at that batch size is measured to take `plain_iteration_s` (None: not
    measured yet; the iteration is not counted)."""
    if plain_iteration_s is not None:
        stats["plain_equivalent_s"] += plain_iteration_s * tokens / batch_size
        stats["compared_s"] += elapsed_s


def finish_stats(stats: dict, elapsed_s: float) -> dict:
    stats["time_s"] = elapsed_s
    stats["tokens_per_s"] = stats["tokens"] / max(elapsed_s, 1e-9)
    # Tokens emitted per sequence per verify step (1.0 without speculation).
    stats["acceptance_length"] = stats["tokens"] / max(stats["sequence_steps"], 1)
    return stats
