"""Step-time simulator: what speculation buys one RL step at a scale you have not run yet.

    python -m tools.simulate --config 235b_moe_async.toml [--hardware h200|gb200|cpu]
        [--set k=5 --set acceptance_length=4.35 --set gpus=512 ...] [--json OUT] [--plot OUT.png]
    python -m tools.simulate --validate     # against the published results and our benchmarks
    python -m tools.simulate --list         # every --set key (workload and hardware)

Per-stage seconds of one step, plain and speculative: data (and whatever a measured step holds
besides the stages), weight sync (async: the sharded sync at the network bandwidth),
generation (prefill, then decode iterations of verify width k + 1 while the batch shrinks as
the long-tailed responses end), logprob recompute, training, the drafter's online training.
Sync: one after the other on every device. Async: rollout and learner meshes overlap
(policy_lag >= 1), the step is the slower side plus the sync; rollout_gpus = 0 picks the split.

Assumptions:
- A forward costs the larger of its memory time (weights read: every dense weight and each
  routed expert at least one token picks; the KV cache, split at most n_kv_heads ways by
  tensor parallelism; four fp32 passes over [tokens, vocab] for sampling) and its compute time
  (2 x active parameters per token plus attention), plus two all-reduces per layer under
  tensor parallelism, plus fixed per-iteration, per-layer and per-draft-step costs.
- Response lengths are log-normal (response_mean, response_sigma) cut at response_max;
  slots take sequences in turn; the KV cache bounds the slots. Acceptance is one mean
  (acceptance_length), or a per-position rate (acceptance) when that is 0.
- The learner runs at train_mfu (train_mfu_moe for MoE, plus its all-to-all over NVLink);
  activation checkpointing adds a forward.
- GPU profiles: vendors' peak figures; decode FLOP efficiency and overheads fitted to the
  paper's measured 8B k sweep (--validate shows the fit); bandwidth efficiency and MFUs stated.
  The cpu profile is measured here first (about 9 s).
- measured_generation_s / measured_logprob_s / measured_train_s / measured_step_s of a plain
  run calibrate: generation time above the roofline's is charged per layer of every forward
  (host time), below it scales generation; the learner is scaled; the rest of the step is
  added unchanged."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tools.simulate.hardware import Hardware, profile
from tools.simulate.step import simulate
from tools.simulate.workload import coerce, from_config, settable, unknown_key, with_sets

STAGES = ("data_s", "weight_sync_s", "generation_s", "logprob_s", "train_s", "drafter_s")


def parse_sets(pairs: list[str]) -> tuple[dict, dict]:
    """--set KEY=VALUE pairs, split into workload and hardware settings, typed."""
    work_keys = settable()
    hw_keys = {f.name: f.type for f in dataclasses.fields(Hardware) if f.name != "name"}
    work, hw = {}, {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair}: expected KEY=VALUE.")
        if key in work_keys:
            work[key] = coerce(key, raw, work_keys[key])
        elif key in hw_keys:
            hw[key] = coerce(key, raw, hw_keys[key])
        else:
            raise unknown_key(key, [*work_keys, *hw_keys])
    return work, hw


def format_result(result: dict, work) -> str:
    plain, spec = result["plain"], result["speculative"]
    lines = [f"{work.model_name}: {work.gpus} devices, {result['mode']}, {result['hardware']}; "
             f"{work.sequences} sequences of ~{work.mean_response:.0f} tokens per step; "
             f"drafter {work.drafter}, k = {work.k}, acceptance length "
             f"{result['acceptance_length']:.2f}",
             f"rollout: {spec['rollout']['replicas']} replicas of tp = {work.rollout_tp}, "
             f"{spec['rollout']['sequences_per_replica']} sequences and "
             f"{spec['rollout']['slots']} slots each, mean batch plain "
             f"{plain['rollout']['mean_batch']:.1f} / speculative "
             f"{spec['rollout']['mean_batch']:.1f}",
             f"  {'stage':16} {'plain s':>10} {'speculative s':>14}"]
    for stage in STAGES:
        lines.append(f"  {stage[:-2]:16} {plain['stages'][stage]:10.3f} "
                     f"{spec['stages'][stage]:14.3f}")
    lines.append(f"  {'step':16} {plain['step_s']:10.3f} {spec['step_s']:14.3f}")
    lines.append(f"generation speed-up {result['generation_speedup']:.2f}x, step speed-up "
                 f"{result['step_speedup']:.2f}x")
    if "speedup_vs_sync_plain" in result:
        lines.append(f"async + speculation vs plain synchronous RL on the same devices: "
                     f"{result['speedup_vs_sync_plain']:.2f}x")
    if result["calibration"] and any(v not in (0.0, 1.0) for v in result["calibration"].values()):
        lines.append("calibrated to the measured plain run: " + ", ".join(
            f"{k} = {v:.3g}" for k, v in result["calibration"].items()))
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    arms = ("plain", "speculative")
    bottoms = [0.0, 0.0]
    for stage in STAGES:
        heights = [result[arm]["stages"][stage] for arm in arms]
        axis.bar(arms, heights, bottom=bottoms, label=stage[:-2])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axis.set_ylabel("seconds per step")
    axis.set_title(f"step speed-up {result['step_speedup']:.2f}x, generation "
                   f"{result['generation_speedup']:.2f}x")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a job config: a path or a name in train_configs/")
    parser.add_argument("--hardware", default="h200", help="h200, gb200 or cpu (measured)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any workload or hardware setting (--list prints them)")
    parser.add_argument("--json", help="write the result as JSON here")
    parser.add_argument("--plot", help="write a stacked-bar PNG of the stages here")
    parser.add_argument("--validate", action="store_true",
                        help="the three validation tables (published 8B, 235B, our runs)")
    parser.add_argument("--list", action="store_true", help="every --set key with its type")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ArithmeticError as err:  # a combination of settings the ranges do not catch
        print(f"error: the settings give no finite step time ({err}); check the --set values.",
              file=sys.stderr)
        return 2


def run(args) -> int:
    if args.list:
        hw_keys = [f.name for f in dataclasses.fields(Hardware) if f.name != "name"]
        print("workload:", ", ".join(settable()))
        print("hardware:", ", ".join(hw_keys))
        return 0
    if args.validate:
        from tools.simulate.validate import format_tables, validate

        result = validate(profile("cpu"))
        print(format_tables(result))
        _write_json(args.json, result)
        return 0 if result["ok"] else 1
    if not args.config:
        raise ValueError("pass --config NAME.toml (or --validate / --list).")
    from titan_spec.config.loader import load_config

    work_sets, hw_sets = parse_sets(args.set)
    cfg = load_config(args.config)
    hw = profile(args.hardware).with_values(**hw_sets)
    gpus = cfg.job.world_size or (2 if args.hardware == "cpu" else hw.gpus_per_node)
    work = with_sets(from_config(cfg, gpus), work_sets)
    result = simulate(work, hw)
    print(format_result(result, work))
    _write_json(args.json, {**result, "workload": dataclasses.asdict(work),
                            "hardware_profile": hw.as_dict()})
    if args.plot:
        plot(result, args.plot)
    return 0


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=1, default=float) + "\n")


if __name__ == "__main__":
    sys.exit(main())
