"""Our rollout engine against Hugging Face `generate` on the same exported weights.

    python -m bench.peers --json out.json [--cache DIR]

The target (bench_25M trained on the arithmetic task) and its 2-layer draft model come from
bench.rollout's cache; both are exported as Hugging Face folders (checkpoint.last_save_in_hf's
writer), then loaded by transformers and by titan-spec (the run's HF loader). Arms, interleaved
within every repeat and reported as the median tokens/s of the repeats:
- hf_plain: `generate`; hf_assisted: `generate(assistant_model=draft)`; hf_prompt_lookup:
  `generate(prompt_lookup_num_tokens=k)` (both batch 1 only in transformers);
- ours_plain: RolloutEngine without a drafter; ours_draft_model / ours_ngram: with the same
  draft model / the n-gram drafter, k draft tokens; ours_draft_model_long_k: the draft model
  at k = 16; ours_draft_model_dynamic: the draft model as transformers' assistant defaults
  (up to 20 tokens, each sequence's draft stopping below draft probability 0.4).
At batch 1 and 8, temperature 1 (the full distribution: top_k=0 and top_p=1 for HF) and greedy.
Then (bench/peers_grpo.py, when trl is installed: the `bench` extra) TRL's GRPOTrainer against
our sync GRPO, plain and speculative, on the same weights: seconds per step and reward."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from bench.rollout import cache_dir, distilled_draft, parse_bench_args, rl_prompts, trained_target
from titan_spec.data.tokenizer import CharTokenizer
from titan_spec.formats.hf import load_hf_model

log = logging.getLogger("bench.peers")
LONG_K = 16
# transformers' assistant defaults: num_assistant_tokens=20, assistant_confidence_threshold=0.4
DYNAMIC_K, DYNAMIC_CONFIDENCE = 20, 0.4
TOKENIZER = CharTokenizer()


def exported(model, name: str) -> Path:
    from titan_spec.formats.hf_export import export_hf

    folder = cache_dir() / f"hf-{name}"
    if not (folder / "tokenizer.json").is_file():  # the character tokenizer goes along
        export_hf(model, folder, "qwen3", "float32", writer=True, max_shard_bytes=1 << 30,
                  tokenizer=TOKENIZER)
    return folder


def _batches(prompts: list[list[int]], size: int):
    for start in range(0, len(prompts), size):
        yield prompts[start:start + size]


def hf_generate(model, prompts, batch: int, temperature: float, max_new: int, **extra) -> int:
    """-> generated tokens (up to EOS) over all prompts, `batch` prompts per call."""
    tokens = 0
    for chunk in _batches(prompts, batch):
        width = max(map(len, chunk))
        ids = torch.tensor([[TOKENIZER.pad_id] * (width - len(p)) + p for p in chunk])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in chunk])[:, None])
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
            if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask.long(), max_new_tokens=max_new,
                                 eos_token_id=TOKENIZER.eos_id, pad_token_id=TOKENIZER.pad_id,
                                 **sampling, **extra)
        for row in out[:, width:].tolist():
            tokens += row.index(TOKENIZER.eos_id) if TOKENIZER.eos_id in row else len(row)
    return tokens


def ours_generate(target, drafter, prompts, batch: int, temperature: float, max_new: int,
                  k: int, seed: int, confidence: float = 0.0) -> int:
    from titan_spec.rollout import RolloutEngine, SamplingParams
    from titan_spec.rollout.draft_length import DraftLengths

    engine = RolloutEngine(target, drafter, num_draft_tokens=k if drafter else 0,
                           max_batch_size=batch, max_seq_len=128,
                           vocab_size=TOKENIZER.vocab_size,
                           draft_lengths=DraftLengths(confidence=confidence))
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new,
                            stop_token_ids=TOKENIZER.stop_ids, seed=seed)
    stops = set(TOKENIZER.stop_ids)  # counted as for HF above: tokens before EOS
    return sum(len(c.token_ids) - int(bool(c.token_ids) and c.token_ids[-1] in stops)
               for c in engine.generate(prompts, params))


def arms(hf_target, hf_draft, target, draft, batch: int, k: int, seed: int) -> dict:
    from titan_spec.drafters import build_drafter

    table = {
        "hf_plain": lambda p, t, n: hf_generate(hf_target, p, batch, t, n),
        "ours_plain": lambda p, t, n: ours_generate(target, None, p, batch, t, n, k, seed),
        "ours_draft_model": lambda p, t, n: ours_generate(
            target, build_drafter("draft_model", model=draft), p, batch, t, n, k, seed),
        "ours_ngram": lambda p, t, n: ours_generate(target, build_drafter("ngram"), p, batch,
                                                    t, n, k, seed),
        # transformers' assisted generation drafts up to 20+ tokens when they are accepted
        # (num_assistant_tokens, heuristic schedule); the same draft at a long k for comparison
        "ours_draft_model_long_k": lambda p, t, n: ours_generate(
            target, build_drafter("draft_model", model=draft), p, batch, t, n, LONG_K, seed),
        "ours_draft_model_dynamic": lambda p, t, n: ours_generate(
            target, build_drafter("draft_model", model=draft), p, batch, t, n, DYNAMIC_K, seed,
            DYNAMIC_CONFIDENCE),
    }
    if batch == 1:  # transformers runs both for one sequence at a time only
        table["hf_assisted"] = lambda p, t, n: hf_generate(hf_target, p, 1, t, n,
                                                           assistant_model=hf_draft)
        table["hf_prompt_lookup"] = lambda p, t, n: hf_generate(
            hf_target, p, 1, t, n, prompt_lookup_num_tokens=k)
    return table


def measure(table: dict, prompts, temperature: float, max_new: int, repeats: int) -> dict:
    """Every arm once per repeat, in turn (interleaved); median tokens/s over the repeats."""
    speeds: dict[str, list[float]] = {name: [] for name in table}
    for arm in table.values():  # warm-up: first calls pay one-off costs
        arm(prompts[:1], temperature, 8)
    for _ in range(repeats):
        for name, arm in table.items():
            start = time.perf_counter()
            tokens = arm(prompts, temperature, max_new)
            speeds[name].append(tokens / (time.perf_counter() - start))
    return {name: {"tokens_per_s": statistics.median(values), "repeats": values}
            for name, values in speeds.items()}


def ratios(row: dict) -> dict:
    def ratio(ours, theirs):
        return row[ours]["tokens_per_s"] / row[theirs]["tokens_per_s"] \
            if ours in row and theirs in row else None
    return {"ours_plain / hf_plain": ratio("ours_plain", "hf_plain"),
            "ours_draft_model / hf_assisted": ratio("ours_draft_model", "hf_assisted"),
            f"ours_draft_model_k{LONG_K} / hf_assisted": ratio("ours_draft_model_long_k",
                                                             "hf_assisted"),
            "ours_draft_model_dynamic / hf_assisted": ratio("ours_draft_model_dynamic",
                                                            "hf_assisted"),
            "ours_ngram / hf_prompt_lookup": ratio("ours_ngram", "hf_prompt_lookup"),
            "ours_draft_model / hf_plain": ratio("ours_draft_model", "hf_plain")}


def grpo(folders: dict, args) -> dict | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        log.warning("trl is not installed (pip install -e '.[bench]'): GRPO part skipped")
        return None
    import tempfile

    from bench.peers_grpo import run_ours, run_trl

    shape = dict(steps=args.grpo_steps, prompts=args.grpo_prompts, group=args.grpo_group,
                 max_new=args.max_new_tokens, lr=2e-5, threads=args.threads, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"trl": run_trl(folders["target"], Path(tmp) / "trl", **shape),
                "ours_plain": run_ours(folders["target"], None, Path(tmp) / "plain", **shape),
                "ours_speculative": run_ours(folders["target"], folders["draft"],
                                             Path(tmp) / "spec", **shape)}
    ratios = {f"trl_step_s / {name}_step_s": arms["trl"]["step_s"] / arms[name]["step_s"]
              for name in ("ours_plain", "ours_speculative")}
    log.info("GRPO %s", {k: round(v, 2) for k, v in ratios.items()})
    return {"shape": shape, "arms": arms, "ratios": ratios}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--prompts", type=int, default=8, help="sequences per arm and repeat")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpo-steps", type=int, default=10, help="0 skips the GRPO part")
    parser.add_argument("--grpo-prompts", type=int, default=4, help="prompts per GRPO step")
    parser.add_argument("--grpo-group", type=int, default=4)
    args = parse_bench_args(parser, argv)
    from transformers import AutoModelForCausalLM

    target_src = trained_target(args.flavor, 300, args.seed, args.threads)
    draft_src = distilled_draft(target_src, "debug", 300, args.seed, {"n_layers": 2})
    folders = {"target": exported(target_src, f"target-{args.flavor}"),
               "draft": exported(draft_src, f"draft-{args.flavor}")}
    hf = {name: AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
          for name, folder in folders.items()}
    target, draft = (load_hf_model(folders[name]).eval() for name in ("target", "draft"))
    prompts, _ = rl_prompts(args.prompts, 1, args.seed)
    results = []
    for batch in (1, 8):
        for temperature in (1.0, 0.0):
            table = arms(hf["target"], hf["draft"], target, draft, batch, args.k, args.seed)
            row = measure(table, prompts, temperature, args.max_new_tokens, args.repeats)
            results.append({"batch": batch, "temperature": temperature, "arms": row,
                            "ratios": ratios(row)})
            log.info("B=%d T=%.0f %s", batch, temperature,
                     {k: round(v, 2) for k, v in ratios(row).items() if v is not None})
    summary = {"target_params": target.args.num_params(), "draft_params": draft.args.num_params(),
               "k": args.k, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
               "threads": args.threads, "results": results,
               "grpo": grpo(folders, args) if args.grpo_steps else None}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps([{"batch": r["batch"], "temperature": r["temperature"], **r["ratios"]}
                      for r in results]))
    if summary["grpo"]:
        print(json.dumps(summary["grpo"]["ratios"]))
    return summary


if __name__ == "__main__":
    main()
