"""The run's drafter in one place: built from `[drafter]`, initialised from a file, warm-started
by distillation from the policy, handed to each rollout engine, adapted online during RL, and
saved with the checkpoint. Learner ranks and async rollout ranks build the same runtime."""

from __future__ import annotations

import logging
import os
import time

import torch

from titan_spec import comm
from titan_spec.formats.eagle3_hf import (
    head_spec,
    is_eagle3_folder,
    load_eagle3_head,
    save_eagle3_head,
)
from titan_spec.formats.hf import hf_model_args, is_hf_folder, load_drafter_folder
from titan_spec.formats.hf_export import DTYPES, export_hf, write_heads
from titan_spec.kernels.vocab_shard import VocabShard
from titan_spec.rollout.adaptive import AdaptiveK
from titan_spec.rollout.draft_length import DraftLengths
from titan_spec.rollout.engine import RolloutEngine

from . import build_drafter
from .online import OnlineDrafter, check_acceptance
from .trainable import build_trainable_drafter

log = logging.getLogger("titan_spec")

# The drafter's weights get their own random stream: same job.seed as the policy, other init.
DRAFTER_SEED_OFFSET = 17


class DrafterRuntime:
    def __init__(self, cfg, drafter=None, trainable=None, dp_group=None, target_args=None):
        self.cfg, self.target_args = cfg, target_args  # the policy's full shape
        self.drafter = drafter  # what the engine calls; None: plain sampling
        self.trainable = trainable  # the learnable module behind it, or None (n-gram)
        self.online = OnlineDrafter(trainable, cfg, dp_group) if trainable is not None else None
        # One adaptive-k chooser for the whole run: its step-time measurements carry over.
        self.adaptive_k = AdaptiveK(cfg.num_draft_tokens) \
            if cfg.adaptive and drafter is not None else None

    @classmethod
    def build(cls, cfg, model_cfg, target_args, target, seed: int, device,
              dp_group=None) -> "DrafterRuntime":
        """target_args: the policy's full shape; target: the module the drafter first serves
        (the learner, or an async rollout rank's own model); dp_group: where online-adaptation
        gradients are summed."""
        if cfg.kind == "none" or cfg.num_draft_tokens == 0:
            return cls(cfg)
        if cfg.kind == "ngram":
            return cls(cfg, build_drafter("ngram"))
        draft_args = eagle3_spec = None
        if cfg.kind == "draft_model" and is_hf_folder(cfg.init_from):
            draft_args = hf_model_args(model_cfg.name, cfg.init_from,
                                       attention_fp64=model_cfg.attention_fp64)
        if cfg.kind == "eagle3" and is_eagle3_folder(cfg.init_from):
            eagle3_spec = head_spec(cfg.init_from, target_args)  # its shape, not the config's
        trainable = build_trainable_drafter(
            cfg.kind, target, model_cfg.name, seed=seed + DRAFTER_SEED_OFFSET, device=device,
            draft_flavor=cfg.draft_model.flavor, draft_layers=cfg.draft_model.layers,
            num_heads=cfg.mtp.num_heads, head_args=target_args, draft_args=draft_args,
            eagle3=cfg.eagle3, eagle3_spec=eagle3_spec)
        return cls(cfg, trainable.drafter, trainable, dp_group, target_args)

    @property
    def module(self):
        """Every trainable drafter parameter (synced to rollout ranks), or None."""
        return self.trainable.module if self.trainable is not None else None

    @property
    def adapter(self) -> OnlineDrafter | None:
        """The online adaptation of this run (drafter.online), or None."""
        return self.online if self.cfg.online else None

    def checkpoint_entries(self) -> dict:
        if self.online is None:
            return {}
        return {"drafter": (self.trainable.module, self.online.optimizer)}

    def init_from(self, device, tokenizer=None, model_name: str = "qwen3") -> bool:
        """Load drafter.init_from when set (a state-dict file, a Hugging Face model folder for
        a draft model, or an exported heads folder); -> whether the drafter is warm.
        tokenizer: the policy's, which an HF draft model's must equal."""
        path = self.cfg.init_from
        if not path:
            return False
        if self.online is None:
            raise ValueError(f"drafter.init_from is set but drafter.kind={self.cfg.kind} "
                             "has no parameters; drop init_from or pick a learnable kind.")
        if self.cfg.kind == "eagle3" and is_eagle3_folder(path):
            head = self.module[0]
            loaded = load_eagle3_head(path, self.target_args, device)
            head.load_state_dict(loaded.state_dict())
            log.info("drafter eagle3 initialised from %s (public EAGLE-3 layout)", path)
            return True
        if os.path.isdir(path):
            load_drafter_folder(self.module, self.cfg.kind, path, model_name, tokenizer)
            log.info("drafter %s initialised from %s", self.cfg.kind, path)
            return True
        if not os.path.isfile(path):
            raise ValueError(f"drafter.init_from={path} is not a file or folder; pass the --out "
                             "file of tools/distill_drafter.py, a Hugging Face model folder "
                             "(draft_model) or an exported step-N-hf-drafter folder.")
        try:
            self.module.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except (RuntimeError, KeyError) as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"drafter.init_from={path} does not fit a {self.cfg.kind} "
                             f"drafter of this config ({first}); check drafter.kind, "
                             "[drafter.draft_model] and [drafter.mtp].") from None
        log.info("drafter %s initialised from %s", self.cfg.kind, path)
        return True

    def export(self, out, model_name: str, dtype: str, *, writer: bool, **options) -> None:
        """The drafter as its own folder: a draft model as a Hugging Face model (same
        tokenizer as the policy); an EAGLE-3 head in the public layout (vLLM / SGLang /
        SpecForge load it); eagle and mtp heads as drafter.safetensors + drafter.json in
        titan-spec's layout."""
        if self.trainable.kind == "draft_model":
            export_hf(self.module, out, model_name, dtype, writer=writer, **options)
        elif self.trainable.kind == "eagle3":
            if writer:
                save_eagle3_head(self.module[0], out, DTYPES[dtype])
        elif writer:
            write_heads(self.module.state_dict(), out, self.trainable.kind, dtype)

    def warm_start(self, verifier, task, tokenizer, seq_len: int, seed: int, is_main: bool,
                   replicas: int, group=None) -> dict:
        """Distil the drafter from the policy (drafter.distill_steps) through `verifier()`, a
        context yielding the policy; all `replicas` learner ranks (in `group`, None: every
        rank) then take the first rank's result."""
        steps, start = self.cfg.distill_steps, time.perf_counter()
        if steps:
            with verifier() as view:
                self.trainable.distill(view, task, tokenizer, steps, lr=self.cfg.lr, seed=seed,
                                       seq_len=seq_len, log=log.info if is_main else None)
            if replicas > 1:
                for param in self.module.parameters():
                    comm.broadcast(param.data, 0, group=group)
        return {"phase": "drafter_warmup", "steps": steps, "kind": self.trainable.kind,
                "time_s": time.perf_counter() - start}

    def engine(self, target, prompts, rollout_cfg, vocab_size: int, dims=None) -> RolloutEngine:
        """A rollout engine over `target` (the verifier view, or a rollout replica); with
        tensor-parallel `dims` and rollout.vocab_parallel, it verifies this tp rank's
        vocabulary shard."""
        if self.trainable is not None:
            self.trainable.bind(target)
        max_len = min(target.args.max_seq_len,
                      max(map(len, prompts)) + rollout_cfg.max_new_tokens + 1)
        return RolloutEngine(target, self.drafter, num_draft_tokens=self.cfg.num_draft_tokens,
                             max_batch_size=rollout_cfg.max_batch_size, max_seq_len=max_len,
                             vocab_size=vocab_size, adaptive=self.adaptive_k,
                             verify=self.cfg.verify,
                             vocab_shard=vocab_shard(dims, vocab_size, rollout_cfg),
                             draft_lengths=DraftLengths(self.cfg.schedule,
                                                        self.cfg.confidence_threshold))

    def acceptance(self, accepted: list, drafted: list, warn: bool) -> tuple[list[float], bool]:
        """Per-position acceptance rates of a step, and whether the drafter has collapsed
        (warned about when `warn`, i.e. on the main rank)."""
        rates = [a / d if d else 0.0 for a, d in zip(accepted, drafted, strict=True)]
        collapsed = self.drafter is not None and warn and check_acceptance(
            rates, self.cfg.collapse_threshold, self.cfg.kind)
        return rates, bool(collapsed)


def vocab_shard(dims, vocab_size: int, rollout_cfg) -> VocabShard | None:
    """This tp rank's share of the vocabulary when verification is vocab-parallel."""
    if dims is None or dims.tp == 1 or not rollout_cfg.vocab_parallel:
        return None
    return VocabShard.of_rank(vocab_size, dims.tp_rank(), dims.tp, dims.tp_group())
