"""Distil a drafter from a trained target checkpoint, and report its acceptance.

    python -m tools.distill_drafter --config debug_model.toml \\
        --checkpoint outputs/debug_model/checkpoint/step-300 --out outputs/debug_model/eagle.pt \\
        [--drafter.kind=mtp --drafter.distill_steps=300 ...]

The drafter is the config's [drafter] (kind, distill_steps, lr, [drafter.draft_model],
[drafter.mtp], num_draft_tokens as the k of the acceptance check), built exactly as the job
builds it, so the output loads through `drafter.init_from` into a job of the same config. The
target is the config's model loaded from a DCP step folder; training is teacher-forced on the
config's task (drafters/distill.py). The output is a torch state dict (load with
weights_only=True) plus a JSON with what was built and the measured acceptance length on
held-out problems."""

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
from titan_spec.drafters.runtime import DrafterRuntime
from titan_spec.formats.initial_load import model_args, tokenizer_spec
from titan_spec.models import build_model_from_args
from titan_spec.models.init import materialize
from titan_spec.rl.tasks import task_from_config
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams


def load_target(cfg, checkpoint: str):
    model = materialize(build_model_from_args(cfg.model.name, model_args(cfg)),
                        torch.device("cpu"))
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
                                            stop_token_ids=tokenizer.stop_ids))
    return engine.last_stats["acceptance_length"]


# Flags of earlier versions -> the config key that replaced each.
_OLD_FLAGS = {"--kind": "--drafter.kind", "--steps": "--drafter.distill_steps",
              "--lr": "--drafter.lr", "--draft-flavor": "--drafter.draft_model.flavor",
              "--draft-layers": "--drafter.draft_model.layers",
              "--num-heads": "--drafter.mtp.num_heads", "--k": "--drafter.num_draft_tokens",
              "--seed": "--job.seed"}


def _refuse_old_flags(argv: list[str]) -> None:
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in _OLD_FLAGS:
            raise ConfigError(f"{flag} is gone: the tool reads the job's config; use "
                              f"{_OLD_FLAGS[flag]}=... instead.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="DCP step folder of the target")
    parser.add_argument("--out", required=True, help="where to write the drafter state dict")
    parser.add_argument("--eval-problems", type=int, default=32)
    args, overrides = parser.parse_known_args(argv)
    try:
        _refuse_old_flags(overrides)
        cfg = load_config(args.config, overrides)
        if cfg.drafter.kind not in ("draft_model", "eagle", "eagle3", "mtp"):
            raise ConfigError(f"drafter.kind={cfg.drafter.kind} has nothing to distil; use "
                              "draft_model, eagle, eagle3 or mtp.")
        if cfg.drafter.distill_steps < 1:
            raise ConfigError("drafter.distill_steps=0: the tool needs at least one step.")
        target = load_target(cfg, args.checkpoint)
    except ValueError as err:  # ConfigError included
        kind = "config error" if isinstance(err, ConfigError) else "error"
        print(f"distill_drafter: {kind}: {err}", file=sys.stderr)
        return 2
    tokenizer = build_tokenizer(tokenizer_spec(cfg), cfg.task.chat_template)
    task = task_from_config(cfg.task)
    d, seed = cfg.drafter, cfg.job.seed
    runtime = DrafterRuntime.build(d, cfg.model, target.args, target, seed, torch.device("cpu"))
    losses = runtime.trainable.distill(target, task, tokenizer, d.distill_steps, lr=d.lr,
                                       seed=seed, seq_len=cfg.training.seq_len, log=print)
    accepted = acceptance_length(target, runtime.drafter, task, tokenizer, args.eval_problems,
                                 d.num_draft_tokens, seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(runtime.module.state_dict(), out)
    report = {"kind": d.kind, "steps": d.distill_steps, "final_loss": losses[-1],
              "params": sum(p.numel() for p in runtime.module.parameters()),
              "acceptance_length": accepted, "k": d.num_draft_tokens,
              "target_checkpoint": args.checkpoint}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
