"""Async RL benchmark: sync vs async, plain vs speculative rollouts, end to end.

    python -m bench.async_rl --json out.json

Four arms run the real job (`run_train.sh`, 2 CPU ranks each, so ranks never exceed cores) for
the same RL steps from the same SFT checkpoint of the 25M policy, with the same prompts:
  sync_plain        both ranks generate their share, then train together (FSDP2)
  sync_speculative  the same with a distilled draft model (k = 4, adapted online)
  async_plain       rank 0 trains (the learner), rank 1 generates (the rollout mesh); the
                    rollout rank works on batch s + 1 while the learner trains on batch s
  async_speculative the same with the draft model
end_to_end_speedup = RL wall time of sync_plain / RL wall time of the arm (larger is better);
steady_state_speedup leaves out the first `--skip` steps (pipeline fill, warm-up);
per_token_speedup compares generated tokens per second of RL wall time (the arms draw different
samples, so their lengths differ a little). The four arms run in turn `--repeats` times (this
machine's speed drifts by 20% over minutes), each ratio is taken within a repeat, and the
reported figures are the medians over repeats.

Where the time goes: a sync step is rollout + logprob + train (+ gather); an async step is the
longer of the learner's work and the rollout rank's generation, because the two overlap. On
two cores the async arms hand one core to generation and one to training, where the sync arms
give both cores to each phase in turn: async only wins what it overlaps (and the idle time of a
rank that finishes its share early), so `breakdown_s` reports both sides, and which one waited.

Sampling seeds are per step and per generating rank, so the sync arms (two generators) and the
async arms (one) draw different samples for the same prompts; reward curves agree in mean."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from statistics import median

import torch

from bench.rl_step import policy_overrides, read_records, report, run_arm
from bench.rollout import parse_bench_args

log = logging.getLogger("bench.async_rl")
SYNC_KEYS = ("time_rollout_s", "time_logprob_s", "time_train_s", "time_drafter_s",
             "time_gather_s", "step_time_s")
ASYNC_KEYS = ("time_waiting_for_rollout_s", "time_logprob_s", "time_train_s", "time_drafter_s",
              "time_weight_sync_s", "step_time_s", "rollout_side_generate_s",
              "rollout_side_waiting_for_weights_s")


def summarise(folder: Path, skip: int, is_async: bool, samples_per_step: int) -> dict:
    records = read_records(folder, "rl")
    wall = read_records(folder, "rl_total")[-1]["wall_s"]
    timed = records[skip:]
    keys = ASYNC_KEYS if is_async else SYNC_KEYS
    summary = {
        "rl_wall_s": wall,
        "steady_state_s": sum(r["step_time_s"] for r in timed),
        "breakdown_s": {key: round(sum(r.get(key, 0.0) for r in timed), 3) for key in keys},
        "reward": [r["reward_mean"] for r in records],
        "acceptance_length": sum(r["acceptance_length"] for r in records) / len(records),
        # Arms draw different samples; their lengths say whether the work was the same.
        "generated_tokens": round(sum(r["response_len_mean"] for r in records)
                                  * samples_per_step),
    }
    if is_async:
        summary["policy_lag_max"] = max(r["policy_lag_max"] for r in records)
        summary["is_weight_max"] = max(r["is_weight_max"] for r in records)
        generate = summary["breakdown_s"]["rollout_side_generate_s"]
        waited = summary["breakdown_s"]["time_waiting_for_rollout_s"]
        # Generation the learner did not wait for: the part async hid behind training.
        summary["rollout_hidden_fraction"] = max(0.0, 1 - waited / max(generate, 1e-9))
        # Each side's own work; the larger one bounds the step however well they overlap.
        learner_busy = summary["steady_state_s"] - waited
        summary["learner_busy_s"] = learner_busy
        summary["bottleneck"] = "rollout rank" if generate > learner_busy else "learner rank"
    return summary


def add_speedups(results: dict) -> None:
    """Ratios against sync_plain of the same repeat; per token corrects for different lengths."""
    base = results["sync_plain"]
    for name, arm in results.items():
        if name != "sync_plain":
            arm["end_to_end_speedup"] = base["rl_wall_s"] / arm["rl_wall_s"]
            arm["steady_state_speedup"] = base["steady_state_s"] / arm["steady_state_s"]
            arm["per_token_speedup"] = (arm["generated_tokens"] / arm["rl_wall_s"]) / (
                base["generated_tokens"] / base["rl_wall_s"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=1, help="steps left out of steady state")
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (global)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="decode slots per generating rank")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-lag", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of all four arms; the ratios reported are their median")
    args = parse_bench_args(parser, argv, threads=False)
    if args.skip >= args.steps:
        parser.error(f"--skip {args.skip} leaves no timed step of --steps {args.steps}")
    torch.set_num_threads(2)
    target, common, speculative = policy_overrides(args, 2)
    plain = ["--drafter.kind=none"]
    asynchronous = ["--async_rl.rollout_ranks=1", f"--async_rl.max_policy_lag={args.max_lag}"]
    arms = {"sync_plain": plain, "sync_speculative": speculative,
            "async_plain": asynchronous + plain, "async_speculative": asynchronous + speculative}
    runs = []
    for repeat in range(args.repeats):  # arms interleaved, so a slow spell hits every arm
        results = {}
        with tempfile.TemporaryDirectory(prefix="async_rl_") as tmp:
            for name, extra in arms.items():
                run_arm(name, common + extra, Path(tmp), 2)
                results[name] = summarise(Path(tmp) / name, args.skip,
                                          name.startswith("async"), args.prompts * args.group)
        add_speedups(results)
        runs.append(results)
        log.info("repeat %d: %s", repeat, {name: round(arm.get("end_to_end_speedup", 1.0), 3)
                                           for name, arm in results.items()})
    result = {
        "config": {"policy": args.flavor, "params": target.args.num_params(), "ranks": 2,
                   "sync_layout": "2 ranks, FSDP2, each generates half the groups",
                   "async_layout": "1 learner rank + 1 rollout rank",
                   "prompts_per_step": args.prompts, "group_size": args.group,
                   "decode_slots_per_generating_rank": args.batch, "k": args.k,
                   "max_policy_lag": args.max_lag, "steps": args.steps,
                   "steady_state_steps": args.steps - args.skip, "temperature": 1.0},
        "repeats": args.repeats,
        **{key: {name: median(run[name][key] for run in runs) for name in arms
                 if name != "sync_plain"}
           for key in ("end_to_end_speedup", "steady_state_speedup", "per_token_speedup")},
        "end_to_end_speedup_each_repeat": {name: [run[name]["end_to_end_speedup"] for run in runs]
                                           for name in arms if name != "sync_plain"},
        "runs": runs,
    }
    return report(result, args.json)


if __name__ == "__main__":
    main()
