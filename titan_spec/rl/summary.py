"""The end-of-run summary table of an RL job (printed by rank 0)."""

from __future__ import annotations


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summary_table(records: list[dict], eval_before: dict | None, eval_after: dict | None) -> str:
    if not records:
        return "no RL steps were run"
    head, tail = records[: min(5, len(records))], records[-min(5, len(records)):]
    # Async steps wait for rollouts generated elsewhere; that wait is their rollout time.
    wait_key = "time_waiting_for_rollout_s" if "time_waiting_for_rollout_s" in records[0] \
        else "time_rollout_s"
    times = {key: sum(r[key] for r in records)
             for key in ("time_logprob_s", "time_train_s", "step_time_s")}
    times["time_rollout_s"] = sum(r[wait_key] for r in records)
    other = times["step_time_s"] - times["time_rollout_s"] - times["time_logprob_s"] \
        - times["time_train_s"]
    total = max(times["step_time_s"], 1e-9)
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
        ("rollout tokens/s (mean)", f"{_mean(r['rollout_tokens_per_s'] for r in records):.0f}"),
        ("logprob mismatch max (all steps)",
         f"{max(r['logprob_mismatch_max'] for r in records):.2e}"),
        ("policy / drafter version (end)",
         f"{records[-1]['policy_version']} / {records[-1]['drafter_version']}"),
        ("step time total", f"{total:.1f} s"),
    ]
    rollout_label = "waiting for rollout" if wait_key != "time_rollout_s" else "rollout"
    for label, key in ((rollout_label, "time_rollout_s"), ("logprob", "time_logprob_s"),
                       ("train", "time_train_s")):
        rows.append((f"  {label}", f"{times[key]:.1f} s ({100 * times[key] / total:.0f}%)"))
    rows.append(("  other (drafter update, rewards, sync)",
                 f"{other:.1f} s ({100 * other / total:.0f}%)"))
    width = max(len(label) for label, _ in rows)
    lines = ["=" * (width + 24), "RL summary", "-" * (width + 24)]
    lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines.append("=" * (width + 24))
    return "\n".join(lines)
