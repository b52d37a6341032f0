"""Plot a run's metrics.jsonl as PNG curves: reward and accuracy, acceptance length,
acceptance per draft position and per context length (drafters decay on long rollouts), and the
RL step-time breakdown (plus the SFT loss when present).

    python -m tools.plot_metrics outputs/debug_model/metrics.jsonl --out outputs/debug_model/rl.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from titan_spec.rl.summary import step_spans


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass <job.dump_folder>/metrics.jsonl.")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg}); is this a metrics.jsonl?") \
                from None
    return records


def _plot_by_context(axis, steps, rl) -> None:
    """Acceptance rate per context-length bucket over the steps (records before the metric
    existed have none)."""
    by_context = [r.get("acceptance_rate_by_context", {}) for r in rl]
    labels = sorted({label for rates in by_context for label in rates},
                    key=lambda label: int(label.split("-")[0].rstrip("+")))
    for label in labels:
        axis.plot(steps, [rates.get(label, float("nan")) for rates in by_context],
                  label=f"context {label}")
    axis.set_ylim(0, 1.05)
    kind = rl[-1].get("drafter_kind", "")
    axis.set_title(f"acceptance by context length{f' ({kind})' if kind else ''}")


def plot(records: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl = [r for r in records if r.get("phase") == "rl"]
    sft = [r for r in records if r.get("phase") == "sft"]
    if not rl and not sft:
        raise ValueError("no 'rl' or 'sft' records to plot.")
    panels = 5 if rl else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    axes = axes[0]
    if sft:
        axes[0].plot([r["step"] for r in sft], [r["loss"] for r in sft], label="SFT loss")
        axes[0].set_yscale("log")
    if rl:
        steps = [r["step"] for r in rl]
        reward_axis = axes[0].twinx() if sft else axes[0]
        reward_axis.plot(steps, [r["reward_mean"] for r in rl], color="C1", label="RL reward")
        reward_axis.set_ylim(0, 1.05)
        reward_axis.set_ylabel("reward")
        axes[1].plot(steps, [r["acceptance_length"] for r in rl], label="acceptance length")
        axes[1].set_title("speculation")
        rates = [r["acceptance_rate_per_position"] for r in rl]
        for position in range(max(map(len, rates), default=0)):
            axes[2].plot(steps, [r[position] if position < len(r) else float("nan")
                                 for r in rates], label=f"draft position {position}")
        axes[2].set_ylim(0, 1.05)
        axes[2].set_title("acceptance rate per position")
        _plot_by_context(axes[3], steps, rl)
        parts = step_spans(rl[0])
        bottom = [0.0] * len(rl)
        for key in parts:
            values = [r[key] for r in rl]
            axes[4].bar(steps, values, bottom=bottom, label=key[5:-2], width=1.0)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        other = [r["step_time_s"] - b for r, b in zip(rl, bottom, strict=True)]
        axes[4].bar(steps, other, bottom=bottom, label="other", width=1.0)
        axes[4].set_title("step time (s)")
    axes[0].set_title("SFT loss / RL reward" if sft and rl else ("RL reward" if rl else "loss"))
    for axis in axes:
        axis.set_xlabel("step")
        axis.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="a metrics.jsonl file")
    parser.add_argument("--out", help="PNG path (default: next to the metrics file)")
    args = parser.parse_args(argv)
    path = Path(args.metrics)
    try:
        out = plot(read_records(path), Path(args.out) if args.out else path.with_suffix(".png"))
    except ValueError as err:
        print(f"plot_metrics: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
