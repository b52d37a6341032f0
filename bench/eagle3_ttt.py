"""EAGLE-3 training-time test against plain distillation, on the main job's debug model.

    python -m bench.eagle3_ttt --json out.json

The debug target is trained with the SFT trainer (cached, --cache), then two EAGLE-3 heads get
the same distillation budget on the task: one teacher-forced only (TTT 1), one trained on its
own predictions up to --ttt steps deep. Both draft for the same prompts and seeds (k = --k,
temperature 1); reported per batch size: acceptance length and per-position acceptance of each,
and their ratio; tokens/s as medians of interleaved repeats."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from titan_spec.data.tokenizer import CharTokenizer
from titan_spec.drafters import build_drafter
from titan_spec.rollout.sampling import SamplingParams

from .interleave import interleaved, median_of, median_ratio
from .rollout import distilled_eagle3, parse_bench_args, rl_prompts, run_one, trained_target

log = logging.getLogger("bench.eagle3_ttt")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--flavor", default="debug")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--ttt", type=int, default=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_bench_args(parser, argv)
    target = trained_target(args.flavor, args.train_steps, args.seed, args.threads)
    heads = {f"ttt{steps}": distilled_eagle3(target, args.distill_steps, args.seed, steps)
             for steps in (1, args.ttt)}
    vocab = CharTokenizer().vocab_size
    params = SamplingParams(temperature=1.0, max_new_tokens=96,
                            stop_token_ids=(CharTokenizer().eos_id,), seed=args.seed)
    results = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts, groups = rl_prompts(max(args.num_prompts, batch), 4, args.seed)
        common = (prompts, groups, batch, params, vocab)
        arms = {name: (lambda head=head, common=common: run_one(
                    target, lambda: build_drafter("eagle3", target=target, head=head), args.k,
                    False, *common)) for name, head in heads.items()}
        runs = interleaved(arms, args.repeats)
        row = {"batch_size": batch}
        for name, result in runs.items():
            row[name] = {"acceptance_length": median_of(result, "acceptance_length"),
                         "acceptance_rate_per_position":
                             result[0]["acceptance_rate_per_position"],
                         "tokens_per_s": median_of(result, "tokens_per_s")}
        row["acceptance_ttt_over_plain"] = (row[f"ttt{args.ttt}"]["acceptance_length"]
                                            / row["ttt1"]["acceptance_length"])
        row["speed_ttt_over_plain"] = median_ratio(runs, f"ttt{args.ttt}", "ttt1",
                                                   "tokens_per_s")
        log.info("B=%d %s", batch, row)
        results.append(row)
    summary = {"target": {"flavor": args.flavor, "params": target.args.num_params(),
                          "train_steps": args.train_steps},
               "distill_steps": args.distill_steps, "ttt_steps": args.ttt, "k": args.k,
               "temperature": 1.0, "repeats": args.repeats, "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
