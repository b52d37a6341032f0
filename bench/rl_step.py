"""RL step benchmark: the same colocated GRPO run with speculative rollouts on and off.

    python -m bench.rl_step --json out.json

Both arms run the real job (`run_train.sh`, 2 CPU ranks, FSDP2, the learner verifying its own
rollouts) from the same SFT checkpoint, with the same seeds and prompts; the speculative arm
adds a distilled draft model (adapted online). Reported: rollout_speedup and step_speedup
(plain time / speculative time over the timed steps, so larger is better), both reward curves,
and the colocated verify-step time against a plain module holding the same weights.

The policy is the rollout benchmark's trained 25M target (bench/rollout.py; its checkpoint and
draft model are cached under bench/cache/ and built on first use, about 12 minutes)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.colocate_verify import measure_verify_step
from bench.rollout import CACHE, distilled_draft, trained_target

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
    lines = (folder / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["phase"] == "rl"]


def timed(records: list[dict], key: str, skip: int) -> float:
    return sum(r[key] for r in records[skip:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=1, help="untimed warm-up steps per arm")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (global)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="decode slots per rank")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.nproc)
    target = trained_target(args.flavor, 300, args.seed, args.nproc)
    distilled_draft(target, "debug", 300, args.seed, {"n_layers": 2})
    draft_file = CACHE / f"draft-debug-{target.args.dim}-300-{args.seed}.pt"
    checkpoint = CACHE / f"target-{args.flavor}-300-{args.seed}" / "checkpoint" / "step-300"
    common = [
        f"--model.flavor={args.flavor}", f"--checkpoint.load_path={checkpoint}",
        "--checkpoint.enable=false", "--sft.steps=300", f"--rl.steps={args.steps}",
        f"--rl.prompts_per_step={args.prompts}", f"--rl.group_size={args.group}",
        "--rl.lr=1e-5", "--rl.eval_problems=0", f"--rollout.max_batch_size={args.batch}",
        "--rollout.max_new_tokens=64", "--metrics.enable_tensorboard=false",
        f"--job.seed={args.seed}", "--training.threads_per_rank=1",
    ]
    speculative = [
        "--drafter.kind=draft_model", "--drafter.draft_flavor=debug", "--drafter.draft_layers=2",
        f"--drafter.init_from={draft_file}", f"--drafter.num_draft_tokens={args.k}",
        "--drafter.lr=1e-4",
    ]
    with tempfile.TemporaryDirectory(prefix="rl_step_") as tmp:
        plain = run_arm("plain", common + ["--drafter.kind=none"], Path(tmp), args.nproc)
        spec = run_arm("speculative", common + speculative, Path(tmp), args.nproc)
    verify = measure_verify_step(args.flavor, args.nproc, batch=args.batch, k=args.k)
    result = {
        "config": {"policy": args.flavor, "params": target.args.num_params(),
                   "ranks": args.nproc, "layout": "FSDP2 (dp_shard = ranks), fp32, 1 thread "
                   "per rank", "prompts_per_step": args.prompts, "group_size": args.group,
                   "decode_slots_per_rank": args.batch, "drafter": "draft_model (2 layers, "
                   "distilled, adapted online)", "k": args.k, "temperature": 1.0,
                   "steps": args.steps, "timed_steps": args.steps - args.skip},
        "rollout_speedup": timed(plain, "time_rollout_s", args.skip)
        / timed(spec, "time_rollout_s", args.skip),
        "step_speedup": timed(plain, "step_time_s", args.skip)
        / timed(spec, "step_time_s", args.skip),
        "acceptance_length": sum(r["acceptance_length"] for r in spec) / len(spec),
        "logprob_mismatch_max": max(r["logprob_mismatch_max"] for r in plain + spec),
        "breakdown_s": {name: {key: round(timed(records, key, args.skip), 3) for key in (
            "time_rollout_s", "time_logprob_s", "time_train_s", "time_drafter_s",
            "step_time_s")} for name, records in (("plain", plain), ("speculative", spec))},
        "reward_curves": {"plain": [r["reward_mean"] for r in plain],
                          "speculative": [r["reward_mean"] for r in spec]},
        "response_len_curves": {"plain": [r["response_len_mean"] for r in plain],
                                "speculative": [r["response_len_mean"] for r in spec]},
        "colocated_verify_step": verify,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
