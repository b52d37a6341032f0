"""Rollout benchmark: plain sampling vs each drafter, same target, prompts and sampling
parameters, measured side by side in one run, at several batch sizes.

    python -m bench.rollout --json out.json

The target is TRAINED on the synthetic task (a random target says nothing about speculation):
the first run trains it with the SFT trainer and caches it (--cache); drafters are
distilled from it. Arms: plain, and per drafter fixed k with token or block verification and
adaptive k, interleaved over --repeats. Output: per batch size and arm, median tokens/s and
acceptance length (tokens emitted per sequence per verify step), speedup_vs_plain as the median
of per-repeat ratios, and block / token acceptance per drafter."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

import torch

from titan_spec.config import load_config
from titan_spec.data.tokenizer import CharTokenizer, encode_prompt
from titan_spec.drafters import build_drafter
from titan_spec.drafters.distill import distill_draft_model, distill_heads
from titan_spec.models import build_model
from titan_spec.models.heads import build_draft_head
from titan_spec.rl.tasks import build_task
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams

from .interleave import interleaved, median_of, median_ratio

# Trained weights are kept outside the checkout unless --cache (or TITAN_SPEC_BENCH_CACHE) says
# where: they take minutes to build and hundreds of MB.
_CACHE = [Path(os.environ.get("TITAN_SPEC_BENCH_CACHE",
                              Path.home() / ".cache" / "titan_spec" / "bench"))]


def cache_dir() -> Path:
    return _CACHE[0]


def add_cache_argument(parser) -> None:
    parser.add_argument("--cache", type=Path, default=cache_dir(),
                        help="folder for the trained target and drafters (default: %(default)s)")


def use_cache(path) -> None:
    _CACHE[0] = Path(path)


def parse_bench_args(parser, argv, threads: bool = True):
    """Parse with --cache added, point the cache there, and set up logging (and the torch
    threads, from --threads) as every benchmark over the cached target does."""
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    use_cache(args.cache)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if threads:
        torch.set_num_threads(args.threads)
    return args
log = logging.getLogger("bench.rollout")


def trained_target(flavor: str, steps: int, seed: int, threads: int):
    """SFT the target with the real trainer (one process), or load the cached result."""
    from titan_spec.job import build_rank
    from titan_spec.runtime import close_distributed

    folder = cache_dir() / f"target-{flavor}-{steps}-{seed}"
    cfg = load_config("debug_model.toml", [
        f"--model.flavor={flavor}", f"--sft.steps={steps}", f"--job.dump_folder={folder}",
        f"--job.seed={seed}", "--checkpoint.interval=100000", "--checkpoint.keep_latest_k=1",
        "--optimizer.lr=1e-3", "--metrics.log_freq=50", "--sft.eval_problems=64", "--rl.steps=0",
        "--drafter.kind=none",
        "--metrics.enable_tensorboard=false", f"--training.threads_per_rank={threads}",
    ])
    _, job = build_rank(cfg)
    job.run()  # resumes from the cached checkpoint: nothing left to train
    job.close()
    close_distributed()
    return job.learner.model.eval()


def distilled_draft(target, flavor: str, steps: int, seed: int, overrides: dict):
    path = cache_dir() / f"draft-{flavor}-{target.args.dim}-{steps}-{seed}.pt"
    draft = build_model("qwen3", flavor, seed=seed + 1, **overrides)
    if path.is_file():
        draft.load_state_dict(torch.load(path, weights_only=True))
    else:
        task = build_task("arithmetic", min_digits=1, max_digits=3)
        distill_draft_model(target, draft, task, CharTokenizer(), steps, seed=seed,
                            log=log.info)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(draft.state_dict(), path)
    return draft.eval()


def distilled_heads(target, num_heads: int, steps: int, seed: int):
    """EAGLE (one head) or MTP (one head per depth), distilled jointly, cached."""
    path = cache_dir() / f"heads{num_heads}-{target.args.dim}-{steps}-{seed}.pt"
    heads = torch.nn.ModuleList([build_draft_head(target.args, seed=seed + 2 + i)
                                 for i in range(num_heads)])
    if path.is_file():
        heads.load_state_dict(torch.load(path, weights_only=True))
    else:
        task = build_task("arithmetic", min_digits=1, max_digits=3)
        distill_heads(target, list(heads), task, CharTokenizer(), steps, seed=seed,
                      log=log.info)
        torch.save(heads.state_dict(), path)
    return [head.eval() for head in heads]


def distilled_eagle3(target, steps: int, seed: int, ttt_steps: int = 3):
    """An EAGLE-3 head (the whole vocabulary: this tokenizer has 64 ids), distilled with
    training-time test, cached."""
    from titan_spec.drafters.ttt import distill_eagle3
    from titan_spec.models.eagle3 import build_eagle3_head

    path = cache_dir() / f"eagle3-ttt{ttt_steps}-{target.args.dim}-{steps}-{seed}.pt"
    head = build_eagle3_head(target.args, seed=seed + 5)
    if path.is_file():
        head.load_state_dict(torch.load(path, weights_only=True))
    else:
        task = build_task("arithmetic", min_digits=1, max_digits=3)
        distill_eagle3(target, head, task, CharTokenizer(), steps, ttt_steps, seed=seed,
                       log=log.info)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(head.state_dict(), path)
    return head.eval()


def rl_prompts(num_prompts: int, group_size: int, seed: int):
    """GRPO-shaped prompts: each problem repeated group_size times, siblings adjacent."""
    task, tok, rng = build_task("arithmetic", min_digits=1, max_digits=3), CharTokenizer(), \
        random.Random(f"bench:{seed}")
    prompts, groups = [], []
    for index in range(num_prompts):
        encoded = encode_prompt(tok, task.sample(rng).prompt)
        prompts += [encoded] * group_size
        groups += [index] * group_size
    return prompts, groups


def run_one(target, make_drafter, k, adaptive, prompts, groups, batch_size, params, vocab,
            verify: str = "token"):
    engine = RolloutEngine(target, make_drafter() if make_drafter else None,
                           num_draft_tokens=k, max_batch_size=batch_size, max_seq_len=128,
                           vocab_size=vocab, adaptive=adaptive, verify=verify)
    start = time.perf_counter()
    completions = engine.generate(prompts, params, group_ids=groups)
    elapsed = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in completions)
    stats = engine.last_stats
    return {"tokens": tokens, "time_s": elapsed, "tokens_per_s": tokens / elapsed,
            "acceptance_length": stats["acceptance_length"],
            "acceptance_rate_per_position": [
                a / d if d else 0.0 for a, d in zip(stats["accepted_per_position"],
                                                    stats["drafted_per_position"], strict=True)],
            "time_draft_s": stats["time_draft_s"], "time_verify_s": stats["time_verify_s"],
            "chosen_k": (engine.adaptive_k.chosen if engine.adaptive_k else None)}


def arm_table(target, drafters: dict, k: int, prompts, groups, batch_size, params, vocab):
    """plain, then per drafter: fixed k with token and with block verification, adaptive k."""
    common = (prompts, groups, batch_size, params, vocab)
    arms = {"plain": lambda: run_one(target, None, 0, False, *common)}
    for name, make in drafters.items():
        arms[f"{name}@k={k}"] = lambda make=make: run_one(target, make, k, False, *common)
        arms[f"{name}@k={k}+block"] = lambda make=make: run_one(target, make, k, False, *common,
                                                                 verify="block")
        arms[f"{name}+adaptive"] = lambda make=make: run_one(target, make, k, True, *common)
    return arms


def summarise_arm(runs: dict, name: str) -> dict:
    """Medians over the repeats; the speed-up is the median of per-repeat ratios to plain."""
    results = runs[name]
    summary = {key: median_of(results, key) for key in ("tokens_per_s", "acceptance_length",
                                                        "time_s", "time_draft_s",
                                                        "time_verify_s")}
    summary["tokens_per_s_each_repeat"] = [r["tokens_per_s"] for r in results]
    if name != "plain":
        summary["speedup_vs_plain"] = median_ratio(runs, name, "plain", "tokens_per_s")
    chosen = [k for r in results for k in (r["chosen_k"] or [])]
    if chosen:
        summary["k_histogram"] = {k: chosen.count(k) for k in sorted(set(chosen))}
    return summary


def block_vs_token(results: list[dict], k: int) -> dict:
    """Acceptance length of block over token verification, per batch size and drafter."""
    table = {}
    for row in results:
        arms = row["drafters"]
        table[row["batch_size"]] = {
            name.split("@")[0]: arms[f"{name}+block"]["acceptance_length"]
            / arms[name]["acceptance_length"]
            for name in arms if name.endswith(f"@k={k}")}
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of every arm; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_bench_args(parser, argv)
    torch.manual_seed(args.seed)

    target = trained_target(args.flavor, args.train_steps, args.seed, args.threads)
    draft = distilled_draft(target, "debug", args.distill_steps, args.seed, {"n_layers": 2})
    (head,) = distilled_heads(target, 1, args.distill_steps, args.seed)
    mtp_heads = distilled_heads(target, 2, args.distill_steps, args.seed)
    eagle3 = distilled_eagle3(target, args.distill_steps, args.seed)
    vocab = CharTokenizer().vocab_size
    drafters = {
        "ngram": lambda: build_drafter("ngram"),
        "draft_model": lambda: build_drafter("draft_model", model=draft),
        "eagle": lambda: build_drafter("eagle", target=target, head=head),
        "eagle3": lambda: build_drafter("eagle3", target=target, head=eagle3),
        "mtp": lambda: build_drafter("mtp", target=target, heads=mtp_heads),
    }
    params = SamplingParams(temperature=args.temperature, max_new_tokens=96,
                            stop_token_ids=(CharTokenizer().eos_id,), seed=args.seed)
    results = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        # At least four batches' worth of sequences, so the tail and refills are measured too.
        num_prompts = max(args.num_prompts, 4 * batch_size // args.group_size)
        prompts, groups = rl_prompts(num_prompts, args.group_size, args.seed)
        run_one(target, None, 0, False, prompts[:batch_size], groups[:batch_size], batch_size,
                params, vocab)  # warm-up
        runs = interleaved(arm_table(target, drafters, args.k, prompts, groups, batch_size,
                                     params, vocab), args.repeats)
        row = {"batch_size": batch_size, "num_sequences": len(prompts),
               "plain": summarise_arm(runs, "plain"), "drafters": {}}
        for name in runs:
            if name == "plain":
                continue
            result = row["drafters"][name] = summarise_arm(runs, name)
            log.info("B=%d %-26s %.0f tok/s  acceptance %.2f  speedup %.2fx", batch_size,
                     name, result["tokens_per_s"], result["acceptance_length"],
                     result["speedup_vs_plain"])
        results.append(row)
    break_even = {}
    for key in results[0]["drafters"]:
        losing = [r["batch_size"] for r in results if r["drafters"][key]["speedup_vs_plain"] < 1]
        break_even[key] = min(losing) if losing else None
    best = max(results[0]["drafters"].items(), key=lambda kv: kv[1]["speedup_vs_plain"])
    summary = {
        "target": {"flavor": args.flavor, "params": target.args.num_params(),
                   "train_steps": args.train_steps},
        "drafters": {"ngram": {"params": 0},
                     "draft_model": {"params": draft.args.num_params(),
                                     "distill_steps": args.distill_steps},
                     "eagle": {"params": sum(p.numel() for p in head.parameters()),
                               "distill_steps": args.distill_steps},
                     "eagle3": {"params": sum(p.numel() for p in eagle3.parameters()),
                                "distill_steps": args.distill_steps, "ttt_steps": 3},
                     "mtp": {"heads": len(mtp_heads),
                             "params": sum(p.numel() for h in mtp_heads for p in h.parameters()),
                             "distill_steps": args.distill_steps}},
        "sampling": {"temperature": args.temperature, "k": args.k,
                     "group_size": args.group_size},
        "repeats": args.repeats,
        "block_vs_token_acceptance": block_vs_token(results, args.k),
        "results": results,
        "best_at_smallest_batch": {"drafter": best[0],
                                   "speedup_vs_plain": best[1]["speedup_vs_plain"]},
        "first_batch_size_where_slower_than_plain": break_even,
    }
    print(json.dumps(summary["best_at_smallest_batch"]))
    print(json.dumps(break_even))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
