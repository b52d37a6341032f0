"""The end-of-run summary table of an RL job (printed by rank 0), for either driver: the step
time is broken down by the named spans every record carries (rl/metrics.py)."""

from __future__ import annotations


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def step_spans(record: dict) -> list[str]:
    """The learner's timer spans of a step record, `time_<span>_s`, in recorded order."""
    return [key for key in record if key.startswith("time_") and key.endswith("_s")]


def _measured_speedup(records: list[dict]) -> str:
    """Over the run: plain decoding's time for the tokens of the iterations adaptive k timed
    against its k = 0 probes, over their own time."""
    compared = sum(r.get("rollout_compared_s", 0.0) for r in records)
    if compared <= 0:
        return "- (measured with drafter.adaptive = true: its k = 0 probes)"
    plain = sum(r["rollout_plain_equivalent_s"] for r in records)
    return f"{plain / compared:.2f}x (measured: adaptive k's k = 0 probes, same prompts)"


def summary_table(records: list[dict], eval_before: dict | None, eval_after: dict | None) -> str:
    if not records:
        return "no RL steps were run"
    head, tail = records[: min(5, len(records))], records[-min(5, len(records)):]
    spans = {key: sum(r[key] for r in records) for key in step_spans(records[0])}
    total = max(sum(r["step_time_s"] for r in records), 1e-9)
    first, last = (_mean(r["reward_mean"] for r in part) for part in (head, tail))
    rows = [
        ("RL steps", f"{len(records)}"),
        ("reward (first 5 -> last 5 steps)", f"{first:.3f} -> {last:.3f}"),
    ]
    if eval_before and eval_after:
        rows.append(("greedy held-out accuracy (before -> after RL)",
                     f"{eval_before['accuracy']:.3f} -> {eval_after['accuracy']:.3f}"))
    rows += [
        ("acceptance length (mean)", f"{_mean(r['acceptance_length'] for r in records):.2f}"),
        ("acceptance rate per draft position (last step)",
         " ".join(f"{x:.2f}" for x in records[-1]["acceptance_rate_per_position"]) or "-"),
        ("acceptance rate by context length (last step)",
         "  ".join(f"{label}: {rate:.2f}" for label, rate in
                   records[-1].get("acceptance_rate_by_context", {}).items()) or "-"),
        ("rollout tokens/s (mean)", f"{_mean(r['rollout_tokens_per_s'] for r in records):.0f}"),
        ("rollout speed-up vs plain decoding", _measured_speedup(records)),
        ("logprob mismatch max (all steps)",
         f"{max(r['logprob_mismatch_max'] for r in records):.2e}"),
        ("policy / drafter version (end)",
         f"{records[-1]['policy_version']} / {records[-1]['drafter_version']}"),
        ("step time total", f"{total:.1f} s"),
    ]
    for key, seconds in spans.items():
        rows.append((f"  {key[5:-2].replace('_', ' ')}",
                     f"{seconds:.1f} s ({100 * seconds / total:.0f}%)"))
    other = total - sum(spans.values())
    rows.append(("  other (rewards, batch assembly, metrics)",
                 f"{other:.1f} s ({100 * other / total:.0f}%)"))
    width = max(len(label) for label, _ in rows)
    lines = ["=" * (width + 24), "RL summary", "-" * (width + 24)]
    lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines.append("=" * (width + 24))
    return "\n".join(lines)
