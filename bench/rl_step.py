"""RL step benchmark: the same colocated GRPO run with speculative rollouts on and off.

    python -m bench.rl_step --json out.json

Both arms run the real job (`run_train.sh`, 2 CPU ranks, FSDP2, the learner verifying its own
rollouts) from the same SFT checkpoint, with the same seeds and prompts; the speculative arm
adds a distilled draft model (adapted online). The arms alternate over --repeats (the order
swapped every repeat), so a slow spell of the machine hits both. Reported: rollout_speedup and
step_speedup (plain time / speculative time over the timed steps, so larger is better) as the
median of the per-repeat ratios, each repeat's ratios, both reward curves,
the plain arm's rollout share of the step (the published 8B profile is 65-72%), and the
colocated verify-step time against a plain module holding the same weights. The 25M policy
already solves its task, so its reward curves are flat; a second part therefore runs the main
job (debug model, half-trained) from one SFT checkpoint with and without speculation and
compares the rising reward curves.

On this CPU scoring a few positions costs about as much as one in a decode step of the 25M
policy only at a decode batch of 1-2 per rank (per-operator overhead sets that cost here,
bench.decode_bound; GPU decode of an 8B model keeps the property, there from reading the
weights, to far larger batches), so the default decodes one sequence per rank at a time: the
regime where speculation pays, with a rollout share close to the published one. `--batch`
changes it.

The policy is the rollout benchmark's trained 25M target (bench/rollout.py; its checkpoint and
draft model are cached (--cache) and built on first use, about 12 minutes)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

import torch

from bench.colocate_verify import measure_verify_step
from bench.interleave import interleaved, median_of, median_ratio
from bench.rollout import cache_dir, distilled_draft, parse_bench_args, trained_target

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.rl_step")


def run_arm(name: str, overrides: list[str], folder: Path, nproc: int) -> list[dict]:
    command = ["./run_train.sh", "--config", "debug_model.toml", *overrides,
               f"--job.dump_folder={folder / name}"]
    env = dict(os.environ, NPROC=str(nproc), PYTHONUNBUFFERED="1")
    log.info("%s: %s", name, " ".join(command))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the {name} run failed (exit {done.returncode})")
    return read_records(folder / name, "rl")


def read_records(folder: Path, phase: str) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["phase"] == phase]


def learning_curves(folder: Path, steps: int, nproc: int) -> dict:
    """The main job (debug model, half-trained by SFT so that rewards can rise) from ONE SFT
    checkpoint, RL with and without speculation: the reward curves must agree within noise."""
    common = ["--metrics.enable_tensorboard=false", "--checkpoint.interval=100000"]
    run_arm("sft", common + ["--rl.steps=0"], folder, nproc)
    sft_steps = read_records(folder / "sft", "sft")[-1]["step"]
    start = [f"--checkpoint.load_path={folder / 'sft' / 'checkpoint' / f'step-{sft_steps}'}",
             "--checkpoint.enable=false", f"--rl.steps={steps}"]
    curves = {}
    for name, drafter in (("plain", "none"), ("speculative", "eagle")):
        records = run_arm(f"curve_{name}", common + start + [f"--drafter.kind={drafter}"],
                          folder, nproc)
        evals = read_records(folder / f"curve_{name}", "eval")
        tail = [r["reward_mean"] for r in records[-20:]]
        mean = sum(tail) / len(tail)
        spread = (sum((x - mean) ** 2 for x in tail) / (len(tail) - 1) / len(tail)) ** 0.5
        curves[name] = {"reward": [r["reward_mean"] for r in records],
                        "reward_last20_mean": mean, "reward_last20_stderr": spread,
                        "greedy_accuracy_before_after": [evals[0]["accuracy"],
                                                         evals[-1]["accuracy"]],
                        "acceptance_length_mean": sum(r["acceptance_length"] for r in records)
                        / len(records),
                        "rl_time_s": sum(r["step_time_s"] for r in records)}
    gap = curves["plain"]["reward_last20_mean"] - curves["speculative"]["reward_last20_mean"]
    noise = (curves["plain"]["reward_last20_stderr"] ** 2
             + curves["speculative"]["reward_last20_stderr"] ** 2) ** 0.5
    return {"config": "debug_model.toml (0.8M policy, 32 prompts x 8 per step), RL from one "
            "SFT checkpoint", "steps": steps, "arms": curves,
            "reward_gap_last20": gap, "reward_gap_in_stderr": gap / max(noise, 1e-9)}


def policy_overrides(args, nproc: int) -> tuple[object, list[str], list[str]]:
    """(the cached 25M target, job overrides every arm shares: RL from the target's SFT
    checkpoint, overrides that add its distilled draft model). Builds both on first use."""
    target = trained_target(args.flavor, 300, args.seed, nproc)
    distilled_draft(target, "debug", 300, args.seed, {"n_layers": 2})
    draft_file = cache_dir() / f"draft-debug-{target.args.dim}-300-{args.seed}.pt"
    checkpoint = cache_dir() / f"target-{args.flavor}-300-{args.seed}" / "checkpoint" / "step-300"
    common = [
        f"--model.flavor={args.flavor}", f"--checkpoint.load_path={checkpoint}",
        "--checkpoint.enable=false", "--sft.steps=300", f"--rl.steps={args.steps}",
        f"--rl.prompts_per_step={args.prompts}", f"--rl.group_size={args.group}",
        "--rl.lr=1e-5", "--rl.eval_problems=0", f"--rollout.max_batch_size={args.batch}",
        "--rollout.max_new_tokens=64", "--metrics.enable_tensorboard=false",
        f"--job.seed={args.seed}", "--training.threads_per_rank=1",
    ]
    speculative = [
        "--drafter.kind=draft_model", "--drafter.draft_model.flavor=debug",
        "--drafter.draft_model.layers=2",
        f"--drafter.init_from={draft_file}", f"--drafter.num_draft_tokens={args.k}",
        "--drafter.lr=1e-4",
    ]
    return target, common, speculative


def report(result: dict, path: str | None) -> dict:
    """Print the results as JSON, and write them to `path` when given."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
    return result


BREAKDOWN = ("time_rollout_s", "time_logprob_s", "time_train_s", "time_drafter_s",
             "time_gather_s", "step_time_s")


def step_totals(records: list[dict], skip: int) -> dict:
    """One arm's run: its timers summed over the timed steps, and its curves."""
    timed = records[skip:]
    return {**{key: sum(r[key] for r in timed) for key in BREAKDOWN},
            "acceptance_length": sum(r["acceptance_length"] for r in records) / len(records),
            "logprob_mismatch_max": max(r["logprob_mismatch_max"] for r in records),
            "reward": [r["reward_mean"] for r in records],
            "response_len": [r["response_len_mean"] for r in records]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=1, help="untimed warm-up steps per arm")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (global)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="decode slots per rank")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of both arms; medians of the ratios are reported")
    parser.add_argument("--curve-steps", type=int, default=60,
                        help="RL steps of the learning-curve comparison (0 skips it)")
    args = parse_bench_args(parser, argv, threads=False)
    torch.set_num_threads(args.nproc)
    target, common, speculative = policy_overrides(args, args.nproc)
    with tempfile.TemporaryDirectory(prefix="rl_step_") as tmp:
        arms = {"plain": lambda: step_totals(run_arm("plain", common + ["--drafter.kind=none"],
                                                     Path(tmp), args.nproc), args.skip),
                "speculative": lambda: step_totals(run_arm("speculative", common + speculative,
                                                           Path(tmp), args.nproc), args.skip)}
        runs = interleaved(arms, args.repeats)
        curves = learning_curves(Path(tmp), args.curve_steps, args.nproc) \
            if args.curve_steps else None
    verify = measure_verify_step(args.flavor, args.nproc, batch=args.batch, k=args.k)
    result = {
        "config": {"policy": args.flavor, "params": target.args.num_params(),
                   "ranks": args.nproc, "layout": "FSDP2 (dp_shard = ranks), fp32, 1 thread "
                   "per rank", "prompts_per_step": args.prompts, "group_size": args.group,
                   "decode_slots_per_rank": args.batch, "drafter": "draft_model (2 layers, "
                   "distilled, adapted online)", "k": args.k, "temperature": 1.0,
                   "steps": args.steps, "timed_steps": args.steps - args.skip},
        "repeats": args.repeats,
        # plain time / speculative time: the speculative arm is the numerator's baseline.
        "rollout_speedup": median_ratio(runs, "plain", "speculative", "time_rollout_s"),
        "step_speedup": median_ratio(runs, "plain", "speculative", "step_time_s"),
        "speedups_each_repeat": [
            {key: p[key] / s[key] for key in ("time_rollout_s", "step_time_s")}
            for p, s in zip(runs["plain"], runs["speculative"], strict=True)],
        # The published 8B profile has rollout at 65-72% of a step; this says where ours is.
        "rollout_share_plain": median(r["time_rollout_s"] / r["step_time_s"]
                                      for r in runs["plain"]),
        "acceptance_length": median_of(runs["speculative"], "acceptance_length"),
        "logprob_mismatch_max": max(r["logprob_mismatch_max"]
                                    for arm in runs.values() for r in arm),
        "breakdown_s": {name: {key: round(median_of(results, key), 3) for key in BREAKDOWN}
                        for name, results in runs.items()},
        "reward_curves": {name: results[0]["reward"] for name, results in runs.items()},
        "response_len_curves": {name: results[0]["response_len"]
                                for name, results in runs.items()},
        "colocated_verify_step": verify,
        "learning_curves": curves,
    }
    return report(result, args.json)


if __name__ == "__main__":
    main()
