"""Distil a drafter from a trained target checkpoint, and report its acceptance.

    python -m tools.distill_drafter --config debug_model.toml \\
        --checkpoint outputs/debug_model/checkpoint/step-300 --kind eagle --steps 300 \\
        --out outputs/debug_model/eagle.pt

Kinds: draft_model (a smaller Qwen3 of --draft-flavor / --draft-layers), eagle (one DraftHead),
mtp (--num-heads DraftHeads). The target is the config's model loaded from a DCP step folder;
training is teacher-forced on the config's synthetic task (drafters/distill.py). The output is a
torch state dict (load with weights_only=True) plus a JSON with what was built and the measured
acceptance length on held-out problems."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from titan_spec.config import ConfigError, load_config
from titan_spec.data.tokenizer import build_tokenizer, encode_prompt
from titan_spec.drafters.trainable import build_trainable_drafter
from titan_spec.models import build_model
from titan_spec.rl.tasks import task_from_config
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams


def load_target(cfg, checkpoint: str):
    model = build_model(cfg.model.name, cfg.model.flavor, seed=cfg.job.seed,
                        attention_fp64=cfg.model.attention_fp64)
    path = Path(checkpoint)
    if not (path / ".metadata").is_file():
        raise ValueError(f"{path} is not a DCP checkpoint step folder (no .metadata); pass e.g. "
                         f"{cfg.job.dump_folder}/checkpoint/step-N.")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    return model.eval()


def acceptance_length(target, drafter, task, tokenizer, problems: int, k: int, seed: int):
    rng = random.Random(f"distill-eval:{seed}")
    prompts = [encode_prompt(tokenizer, task.sample(rng).prompt) for _ in range(problems)]
    engine = RolloutEngine(target, drafter, num_draft_tokens=k, max_batch_size=8,
                           max_seq_len=128, vocab_size=tokenizer.vocab_size)
    engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=96, seed=seed,
                                            stop_token_ids=(tokenizer.eos_id,)))
    return engine.last_stats["acceptance_length"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="DCP step folder of the target")
    parser.add_argument("--kind", required=True, choices=("draft_model", "eagle", "mtp"))
    parser.add_argument("--out", required=True, help="where to write the drafter state dict")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--draft-flavor", default="debug")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--eval-problems", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        target = load_target(cfg, args.checkpoint)
    except ValueError as err:  # ConfigError included
        kind = "config error" if isinstance(err, ConfigError) else "error"
        print(f"distill_drafter: {kind}: {err}", file=sys.stderr)
        return 2
    tokenizer = build_tokenizer(cfg.model.tokenizer)
    task = task_from_config(cfg.task)
    trainable = build_trainable_drafter(
        args.kind, target, cfg.model.name, seed=args.seed, draft_flavor=args.draft_flavor,
        draft_layers=args.draft_layers, num_heads=args.num_heads)
    losses = trainable.distill(target, task, tokenizer, args.steps, lr=args.lr, seed=args.seed,
                               seq_len=cfg.training.seq_len, log=print)
    drafter, trainable = trainable.drafter, trainable.module
    accepted = acceptance_length(target, drafter, task, tokenizer, args.eval_problems, args.k,
                                 args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainable.state_dict(), out)
    report = {"kind": args.kind, "steps": args.steps, "final_loss": losses[-1],
              "params": sum(p.numel() for p in trainable.parameters()),
              "acceptance_length": accepted, "k": args.k, "target_checkpoint": args.checkpoint}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
