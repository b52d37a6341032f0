"""The Learner: the policy being trained (its FSDP2 / TP / EP shards), its optimizer and LR
schedule. One forward/backward and one optimizer step serve SFT and RL; `score` recomputes the
learner's logprobs of rollout tokens, `policy_step` trains on them, and `verifier()` lends the
learner's own unsharded weights to the rollout engine as its verifier (parallel/verifier.py)."""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from titan_spec.comm import all_reduce_dp
from titan_spec.components.lr_scheduler import build_lr_scheduler
from titan_spec.components.optimizer import build_optimizer, clip_grad_norm_
from titan_spec.formats.initial_load import hf_folder, load_initial_weights, model_args
from titan_spec.models import build_model_from_args, get_model_spec
from titan_spec.models.init import init_weights, materialize
from titan_spec.parallel.fp8 import Fp8Plan
from titan_spec.parallel.plans import parallelize
from titan_spec.parallel.tensor_parallel import reduce_partial_grads
from titan_spec.parallel.verifier import colocated_verifier
from titan_spec.rl.losses import build_loss
from titan_spec.rl.rollout_batch import RolloutBatch, chunks, learner_logprobs
from titan_spec.rollout.sampling import token_logprobs

log = logging.getLogger("titan_spec")


class Learner:
    def __init__(self, model, optimizer, scheduler, dims, device, builder, training_cfg,
                 vocab_size: int):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.dims, self.device, self.builder = dims, device, builder
        self.accum_steps = training_cfg.grad_accum_steps
        self.max_grad_norm = training_cfg.max_grad_norm
        self.vocab_size = vocab_size  # the tokenizer's: padded vocabulary rows never count
        self.reference: nn.Module | None = None  # the policy at RL start (KL term), whole
        self.fp8 = Fp8Plan(None)  # build() sets the job's [quantize] plan

    @classmethod
    def build(cls, cfg, dims, device, vocab_size: int, initial_weights: bool = True) -> "Learner":
        """initial_weights: fill the model from checkpoint.initial_load_path when set (False
        when a checkpoint will be resumed into it anyway); otherwise it is initialised from
        job.seed."""
        spec = get_model_spec(cfg.model.name)
        model = build_model_from_args(cfg.model.name, model_args(cfg))
        if model.args.vocab_size < vocab_size:
            raise ValueError(f"model vocab {model.args.vocab_size} < tokenizer vocab "
                             f"{vocab_size}; pick a matching model.flavor.")
        fp8 = Fp8Plan(cfg.quantize)
        fp8.learner(model)  # before the plans wrap the layers
        parallelize(cfg.model.name, model, dims, cfg.parallelism, device.type)
        materialize(model, device)
        if not (initial_weights and load_initial_weights(model, cfg)):
            init_weights(model, device, cfg.job.seed)
        log.info("model %s/%s: %.2fM parameters, layout dp_replicate=%d dp_shard=%d tp=%d "
                 "ep=%d", cfg.model.name, hf_folder(cfg) or cfg.model.flavor,
                 model.args.num_params() / 1e6, dims.dp_replicate, dims.dp_shard, dims.tp, dims.ep)
        optimizer = build_optimizer(model, cfg.optimizer)
        scheduler = build_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.sft.steps,
                                       cfg.rl.lr / cfg.optimizer.lr, cfg.rl.warmup_steps)
        learner = cls(model, optimizer, scheduler, dims, device, spec.builder, cfg.training,
                      vocab_size)
        learner.fp8 = fp8
        if cfg.rl.steps and cfg.rl.kl_coef > 0:  # a scorer: the verifier's FP8 recipe
            learner.reference = fp8.verifier(_empty_like(spec.builder, model.args, device))
        return learner

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------ the one training step
    def forward_backward(self, inputs, loss_of_logits, aux_divisor: int):
        """loss_of_logits(logits) -> (loss, metrics); the MoE load-balancing loss is added
        divided by `aux_divisor` (the number of micro-batch backwards it is summed over)."""
        logits = self.model(inputs)
        loss, metrics = loss_of_logits(logits)
        aux = self.model.aux_loss()
        if aux is not None:
            loss = loss + aux / aux_divisor
        loss.backward()
        return loss.detach(), metrics

    def optim_step(self) -> float:
        """Reduce, clip, step, advance the LR schedule; -> the pre-clip gradient norm."""
        reduce_partial_grads(self.model)
        grad_norm = clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ------------------------------------------------------------ RL verbs
    @contextmanager
    def verifier(self, timer=None):
        """The learner as the rollout verifier: unsharded once (span `gather`), a hook-free
        view yielded, resharded on exit (span `reshard`)."""
        span = timer.span if timer is not None else (lambda name: nullcontext())
        with span("gather"):
            context = colocated_verifier(self.model, self.dims, self.builder,
                                         self.fp8.verifier)
            view = context.__enter__()
        try:
            yield view
        finally:
            with span("reshard"):
                context.__exit__(None, None, None)

    @torch.no_grad()
    def freeze_reference(self, view) -> None:
        """The KL reference becomes the current policy (called once, at RL start)."""
        weights = dict(view.named_parameters())
        for name, param in self.reference.named_parameters():
            param.copy_(weights[name])

    def score(self, view, batch: RolloutBatch, sampling, adapter, global_tokens: float,
              timer) -> dict:
        """Learner logprobs of the rollout tokens (ratio denominator and mismatch), reference
        logprobs, and the drafter's online update, all from no-grad forwards of the view.
        Spans: `logprob` (the forwards) and `drafter` (its adaptation)."""
        old, ref = torch.zeros_like(batch.mask), None
        if adapter is not None:
            adapter.begin()
        for start, stop in chunks(batch.inputs.shape[0], self.accum_steps):
            with timer.span("logprob"), torch.no_grad():
                logits, hidden = view(batch.inputs[start:stop], return_hidden=True,
                                      hidden_layers=adapter.hidden_layers if adapter else None)
                old[start:stop] = learner_logprobs(logits, batch, start, stop, sampling,
                                                   self.vocab_size)
            if adapter is not None:
                with timer.span("drafter"):
                    adapter.accumulate(batch, start, stop, logits, hidden, view,
                                       self.vocab_size, global_tokens)
        if self.reference is not None:
            with timer.span("logprob"):
                ref = self._reference_logprobs(batch, sampling)
        batch.old_logprobs, batch.ref_logprobs = old, ref
        if adapter is None:
            return {}
        with timer.span("drafter"):
            return adapter.step()

    @torch.no_grad()
    def _reference_logprobs(self, batch: RolloutBatch, sampling) -> torch.Tensor:
        ref = torch.zeros_like(batch.mask)
        for start, stop in chunks(batch.inputs.shape[0], self.accum_steps):
            logits = self.reference(batch.inputs[start:stop])
            ref[start:stop] = learner_logprobs(logits, batch, start, stop, sampling,
                                               self.vocab_size)
        return ref

    def policy_step(self, batch: RolloutBatch, sampling, rl) -> tuple[dict, int]:
        """rl.minibatches optimizer updates on the scored batch -> (metrics, updates)."""
        loss_fn = build_loss(rl.loss)
        parts = chunks(batch.inputs.shape[0], rl.minibatches)
        counts = torch.tensor([float(batch.mask[a:b].sum()) for a, b in parts], dtype=torch.float64)
        counts = all_reduce_dp(self.dims, counts.to(self.device)).clamp(min=1)
        sums = {"loss": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0, "kl": 0.0}
        grad_norms = []
        self.model.train()
        for index, (first, last) in enumerate(parts):
            minibatch = batch.slice(first, last)
            for start, stop in chunks(last - first, self.accum_steps):
                micro = minibatch.slice(start, stop)
                loss_of = functools.partial(_policy_loss, loss_fn, micro, counts[index], sampling,
                                            rl, self.vocab_size)
                loss, metrics = self.forward_backward(
                    micro.inputs, loss_of, self.accum_steps * self.dims.dp * len(parts))
                sums["loss"] += loss.item() / len(parts)
                for key, value in metrics.items():
                    sums[key] += value.item() / len(parts)
            grad_norms.append(self.optim_step())
        totals = all_reduce_dp(self.dims, torch.tensor(list(sums.values()), dtype=torch.float64,
                                                       device=self.device))
        result = dict(zip(sums, totals.tolist(), strict=True))
        if rl.kl_coef == 0:
            result.pop("kl")
        result["grad_norm"] = max(grad_norms)
        return result, len(parts)


def _policy_loss(loss_fn, micro: RolloutBatch, count, sampling, rl, vocab_size: int, logits):
    logprobs = token_logprobs(logits, micro.targets, sampling, vocab_size)
    return loss_fn(logprobs, micro.old_logprobs, micro.advantages, micro.mask, count.float(),
                   rl.clip_low, rl.clip_high, micro.ref_logprobs, rl.kl_coef, micro.is_weights)


def _empty_like(builder, args, device) -> nn.Module:
    """A plain, frozen module of the policy's full shape (filled by freeze_reference or a
    checkpoint)."""
    with torch.device("meta"):
        module = builder(args)
    materialize(module, device)
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()
