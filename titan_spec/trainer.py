"""The training loop as a readable recipe: SFT warm-start of the policy, drafter warm-start,
then synchronous GRPO whose rollouts are speculative and verified by the learner itself.

One RL step (colocated):
  1. rollout: the learner unshards once (parallel/colocate.py); its hook-free view is the
     target of the RolloutEngine; the drafter proposes, the view verifies, rejection sampling
     keeps the output distribution exact. Each data-parallel rank generates its prompts' groups.
  2. logprob: the same view recomputes the rollout tokens' logprobs (mismatch vs behaviour is
     logged); the drafter adapts on that forward's detached logits / hidden states.
  3. train: the learner reshards; clipped-surrogate loss on group-relative advantages,
     normalised by the global number of completion tokens; optimizer step."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from titan_spec.components.checkpoint import CheckpointManager
from titan_spec.components.lr_scheduler import build_lr_scheduler, refresh_after_load
from titan_spec.components.metrics import MetricsLogger, memory_gib
from titan_spec.components.optimizer import build_optimizer, clip_grad_norm_
from titan_spec.config import to_toml
from titan_spec.data.sft import SFTDataSource
from titan_spec.data.tokenizer import build_tokenizer, encode_prompt
from titan_spec.models import build_model, get_model_spec
from titan_spec.parallel.colocate import colocated_policy
from titan_spec.parallel.init import materialize_and_init
from titan_spec.parallel.parallel_dims import ParallelDims
from titan_spec.parallel.tensor_parallel import reduce_partial_grads
from titan_spec.rl.advantages import group_advantages, informative_groups
from titan_spec.rl.async_rl import share_start_point
from titan_spec.rl.losses import build_loss
from titan_spec.rl.online_drafter import OnlineDrafter, check_acceptance
from titan_spec.rl.rollout_batch import (
    RolloutBatch,
    assemble,
    chunks,
    forward_chunks,
    learner_logprobs,
    logprob_mismatch,
)
from titan_spec.rl.summary import summary_table
from titan_spec.rl.tasks import task_from_config
from titan_spec.rollout.adaptive import AdaptiveK
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.greedy import greedy_decode
from titan_spec.rollout.sampling import SamplingParams, token_logprobs

log = logging.getLogger("titan_spec")


@dataclass
class Env:
    rank: int
    world_size: int
    device: torch.device


def setup_distributed(training_cfg) -> Env:
    """Init the default process group from torchrun's env vars (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = training_cfg.device == "cuda" or (
        training_cfg.device == "auto" and torch.cuda.is_available())
    if training_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device=cuda but no CUDA device is visible; use auto or cpu.")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(training_cfg.threads_per_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                device_id=device if use_cuda else None)
    return Env(rank, world_size, device)


def preflight(cfg, world_size: int) -> ParallelDims:
    """Every check that needs no process: degrees vs world size, model shape vs degrees,
    batch divisibility. Run by the launcher before it spawns workers, and by each worker."""
    from titan_spec.parallel.tensor_parallel import check_tp_divisibility

    args = get_model_spec(cfg.model.name).args(cfg.model.flavor)
    if cfg.parallelism.rollout.ranks:
        dims = _preflight_rollout_mesh(cfg, world_size, args)
    else:
        dims = ParallelDims.from_config(cfg.parallelism, world_size)
    if dims.tp > 1:
        check_tp_divisibility(args, dims.tp)
    if dims.ep > 1 and (not args.is_moe or args.num_experts % dims.ep):
        raise ValueError(f"parallelism.ep={dims.ep} needs an MoE flavor whose num_experts it "
                         f"divides; {cfg.model.flavor} has {args.num_experts} experts.")
    for key in ("sft", "rl"):
        count = getattr(cfg, key).eval_problems
        if 0 < count < dims.dp:
            raise ValueError(f"{key}.eval_problems={count} is fewer than the {dims.dp} "
                             "data-parallel ranks that share them; use at least that many, or 0.")
    if cfg.rl.steps:
        _preflight_rl(cfg, dims, args)
    per_step = dims.dp * cfg.training.grad_accum_steps
    if cfg.sft.steps and cfg.training.global_batch_size % per_step:
        raise ValueError(
            f"training.global_batch_size={cfg.training.global_batch_size} must be divisible by "
            f"data-parallel degree {dims.dp} x grad_accum_steps {cfg.training.grad_accum_steps}"
            f" = {per_step}; e.g. use global_batch_size="
            f"{max(per_step, cfg.training.global_batch_size // per_step * per_step)}."
        )
    return dims


def split_world(parallelism, world_size: int) -> tuple[ParallelDims, ParallelDims]:
    """(learner dims over the first ranks, rollout dims over the last parallelism.rollout.ranks);
    ValueError naming the fix when the split is impossible."""
    rollout = parallelism.rollout
    if rollout.ranks >= world_size:
        raise ValueError(f"parallelism.rollout.ranks={rollout.ranks} leaves no learner rank in a "
                         f"world of {world_size}; launch more ranks or lower it.")
    if rollout.ranks % rollout.tp:
        raise ValueError(f"parallelism.rollout.tp={rollout.tp} must divide "
                         f"parallelism.rollout.ranks={rollout.ranks} (rollout dp = ranks / tp).")
    learner_world = world_size - rollout.ranks
    try:
        learner = ParallelDims.from_config(parallelism, learner_world)
    except ValueError as err:
        raise ValueError(f"with parallelism.rollout.ranks={rollout.ranks} the learner mesh has "
                         f"{learner_world} of the {world_size} ranks: {err}") from None
    rollout_dims = ParallelDims(1, -1, rollout.tp, 1, rollout.ranks, first_rank=learner_world)
    return learner, rollout_dims


def _preflight_rollout_mesh(cfg, world_size: int, args) -> ParallelDims:
    """Checks of the async layout -> the learner's dims."""
    from titan_spec.parallel.rollout_layout import check_rollout_tp

    learner, _ = split_world(cfg.parallelism, world_size)
    rollout = cfg.parallelism.rollout
    if rollout.tp > 1:
        check_rollout_tp(args, rollout.tp)
    if cfg.job.dry_run:
        return learner
    limits = {
        "async RL needs rl.steps > 0 (the rollout ranks only serve RL).": cfg.rl.steps == 0,
        "async RL versions the policy once per step: set rl.minibatches=1.":
            cfg.rl.minibatches != 1,
        "drafter.adaptive needs rollout tp=1 (peers would choose different k).":
            cfg.drafter.adaptive and rollout.tp > 1,
        "rl.inflight_weight_updates needs rl.stale_policy=drop (under wait the schedule fixes "
        "the version of every batch).": cfg.rl.inflight_weight_updates
        and cfg.rl.stale_policy == "wait",
    }
    for message, broken in limits.items():
        if broken:
            raise ValueError(message)
    return learner


def _preflight_rl(cfg, dims, args) -> None:
    rl, rollout = cfg.rl, cfg.parallelism.rollout
    if not rollout.ranks and (rl.stale_policy != "wait" or rl.inflight_weight_updates):
        raise ValueError("rl.stale_policy=drop and rl.inflight_weight_updates apply to async RL "
                         "only: set parallelism.rollout.ranks > 0, or drop them.")
    generators = rollout.ranks // rollout.tp if rollout.ranks else dims.dp
    if rl.prompts_per_step % generators:
        who = "rollout replicas" if rollout.ranks else "data-parallel ranks"
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} must be divisible by the "
                         f"{generators} {who} (each generates whole groups).")
    if rollout.ranks and rl.prompts_per_step % dims.dp:
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} must be divisible by the "
                         f"{dims.dp} learner data-parallel ranks (each trains on whole groups).")
    local = rl.prompts_per_step // dims.dp * rl.group_size
    if local % rl.minibatches:
        raise ValueError(f"each rank's {local} samples (rl.prompts_per_step / dp x group_size) "
                         f"must split into rl.minibatches={rl.minibatches} equal parts.")
    if cfg.rollout.temperature == 0:
        raise ValueError("rollout.temperature=0 makes every sample of a group identical (no "
                         "advantage signal); RL needs temperature > 0.")
    if rl.kl_coef > 0 and dims.tp > 1:
        raise ValueError("rl.kl_coef > 0 keeps a full reference copy, not supported with "
                         "parallelism.tp > 1 yet; set rl.kl_coef=0 or tp=1.")
    if cfg.rollout.max_new_tokens >= args.max_seq_len:
        raise ValueError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room "
                         f"for the prompt in the model's max_seq_len={args.max_seq_len}.")


def token_loss_sum(logits, labels, loss_mask) -> torch.Tensor:
    """Sum over valid tokens of the next-token cross-entropy (float32)."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (losses * loss_mask.flatten()).sum()


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.env = setup_distributed(cfg.training)
        self.dims = preflight(cfg, self.env.world_size)
        self.async_mode = cfg.parallelism.rollout.ranks > 0
        self.learner_group = None  # None: the default group (synchronous: every rank learns)
        if self.async_mode:
            self._setup_async_meshes()
        elif self.env.world_size > 1:
            self.dims.build_meshes(self.env.device.type)
        self.is_learner = self.dims.contains(self.env.rank)
        self.is_main = self.env.rank == 0
        torch.manual_seed(cfg.job.seed)
        self.tokenizer = build_tokenizer(cfg.model.tokenizer)
        self.task = task_from_config(cfg.task)
        if not self.is_learner:
            self._init_rollout_rank()
            return
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.lr_scheduler, cfg.sft.steps,
                                            cfg.rl.lr / cfg.optimizer.lr, cfg.rl.warmup_steps)
        self.drafter, self.online_drafter = self._build_drafter()
        self._adaptive = self._adaptive_policy()
        self.policy_version = 0  # optimizer updates of the RL phase
        self.drafter_warm = self._load_drafter_init()
        self.reference = None  # frozen policy for the KL term (rl.kl_coef > 0)
        self.rl_records: list[dict] = []
        self.evals: list[dict] = []
        self.data = SFTDataSource(self.task, self.tokenizer, cfg.training.global_batch_size,
                                  cfg.training.seq_len, cfg.job.seed)
        extra = {}
        if self.online_drafter is not None:
            extra["drafter"] = (self.online_drafter.trainable.module,
                                self.online_drafter.optimizer)
        # In async RL only the learner ranks (the first ones) hold the model and save it.
        self.checkpoint = CheckpointManager(cfg.checkpoint, cfg.job.dump_folder, self.model,
                                            self.optimizer, self.scheduler, self.env.rank,
                                            self.dims.world_size if self.async_mode
                                            else self.env.world_size, extra=extra,
                                            group=self.learner_group)
        self.step = 0
        # An explicit load_path is honoured even when this run does not save checkpoints.
        use_checkpoints = cfg.checkpoint.enable or bool(cfg.checkpoint.load_path)
        resume_from = self.checkpoint.find_resume_point() if use_checkpoints else None
        if resume_from is not None:
            state = self.checkpoint.load(resume_from)
            refresh_after_load(self.scheduler, cfg.optimizer.lr)
            self.step = state["step"]
            self.policy_version = state.get("policy_version", 0)
            if "drafter" in state.get("loaded_extra", []):
                self.drafter_warm = state.get("drafter_warm", False)
            if self.online_drafter is not None:
                self.online_drafter.version = state.get("drafter_version", 0)
        if self.async_mode:  # the rollout ranks learn where the run resumes
            share_start_point(self.step, self.policy_version)
        self.metrics = MetricsLogger(cfg.job.dump_folder, cfg.metrics, cfg.job.name,
                                     self.is_main, resumed=resume_from is not None)
        if self.is_main:
            os.makedirs(cfg.job.dump_folder, exist_ok=True)
            with open(os.path.join(cfg.job.dump_folder, "config.toml"), "w") as f:
                f.write(to_toml(cfg))

    def _setup_async_meshes(self) -> None:
        """Every rank builds every mesh and group (creation is collective over the job)."""
        from titan_spec.parallel.weight_sync import WeightSync

        _, self.rollout_dims = split_world(self.cfg.parallelism, self.env.world_size)
        device_type = self.env.device.type
        self.dims.build_meshes(device_type)
        self.rollout_dims.build_meshes(device_type)
        self.learner_group = dist.new_group(list(range(self.dims.world_size)))
        rollout_ranks = list(range(self.dims.world_size, self.env.world_size))
        tp = self.cfg.parallelism.rollout.tp
        on_rollout = self.rollout_dims.contains(self.env.rank)
        tp_rank = self.rollout_dims.mesh("tp").get_local_rank() if on_rollout and tp > 1 else 0
        args = get_model_spec(self.cfg.model.name).args(self.cfg.model.flavor)
        device, fanout, staging = self.env.device, None, 2 << 30
        if self.cfg.rl.stale_policy == "drop":
            # A replica blocked on its bounded queue takes no sync until the learner takes its
            # batch: so no replica may relay another's buckets (one broadcast per replica), and
            # the learner must never wait for buckets to be taken (unbounded staging).
            fanout = [rollout_ranks[i:i + tp] for i in range(0, len(rollout_ranks), tp)]
            staging = None
            if self.env.rank == 0:
                log.warning("rl.stale_policy=drop: learner rank 0 holds every weight sync not "
                            "yet taken, up to about max_policy_lag + 2 fp32 copies of the "
                            "policy (%.1f GiB each)", args.num_params() * 4 / 2**30)
        self.policy_sync = WeightSync(0, rollout_ranks, rollout_tp=tp, rollout_tp_rank=tp_rank,
                                      n_kv_heads=args.n_kv_heads, device=device, fanout=fanout,
                                      staging_bytes=staging)
        self.drafter_sync = WeightSync(0, rollout_ranks, device=device, fanout=fanout,
                                       staging_bytes=staging)  # drafters: held whole

    def _init_rollout_rank(self) -> None:
        from titan_spec.rl.async_rl import RolloutWorker

        cfg = self.cfg
        self.worker = RolloutWorker(self, self.rollout_dims, self.policy_sync, self.drafter_sync)
        self.drafter, self.online_drafter = self._build_drafter(self.worker.model)
        self._adaptive = self._adaptive_policy()
        self.step, self.policy_version = share_start_point()
        self.metrics = MetricsLogger(cfg.job.dump_folder, cfg.metrics, cfg.job.name, False,
                                     resumed=False)

    def _build_model(self):
        cfg = self.cfg
        spec = get_model_spec(cfg.model.name)
        model = build_model(cfg.model.name, cfg.model.flavor, device="meta",
                            attention_fp64=cfg.model.attention_fp64)
        if model.args.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model vocab {model.args.vocab_size} < tokenizer vocab "
                             f"{self.tokenizer.vocab_size}; pick a matching model.flavor.")
        spec.parallelize(model, self.dims, cfg.parallelism, self.env.device.type)
        materialize_and_init(model, self.env.device, cfg.job.seed)
        n_params = model.args.num_params()
        log.info("model %s/%s: %.2fM parameters, layout dp_replicate=%d dp_shard=%d tp=%d ep=%d",
                 cfg.model.name, cfg.model.flavor, n_params / 1e6, self.dims.dp_replicate,
                 self.dims.dp_shard, self.dims.tp, self.dims.ep)
        return model

    def _build_drafter(self, target=None):
        """-> (drafter for the engine or None, OnlineDrafter or None). target: the module the
        drafter first serves (the learner; a rollout rank's own model in async mode)."""
        d = self.cfg.drafter
        if d.kind == "none" or d.num_draft_tokens == 0:
            return None, None
        if d.kind == "ngram":
            from titan_spec.drafters import build_drafter

            return build_drafter("ngram"), None
        from titan_spec.drafters.trainable import build_trainable_drafter

        target = self.model if target is None else target
        trainable = build_trainable_drafter(
            d.kind, target, self.cfg.model.name, seed=self.cfg.job.seed + 17,
            device=self.env.device, draft_flavor=d.draft_flavor, draft_layers=d.draft_layers,
            num_heads=d.num_heads, head_args=get_model_spec(self.cfg.model.name).args(
                self.cfg.model.flavor, attention_fp64=self.cfg.model.attention_fp64))
        dp_group = self.dims.mesh("dp").get_group() \
            if self.is_learner and self._dp_comm() else None
        return trainable.drafter, OnlineDrafter(trainable, d, dp_group)

    def _adaptive_policy(self) -> AdaptiveK | None:
        """One adaptive-k policy for the whole run: its step-time measurements carry over."""
        d = self.cfg.drafter
        return AdaptiveK(d.num_draft_tokens) if d.adaptive and self.drafter is not None else None

    def _load_drafter_init(self) -> bool:
        path = self.cfg.drafter.init_from
        if not path:
            return False
        if self.online_drafter is None:
            raise ValueError(f"drafter.init_from is set but drafter.kind={self.cfg.drafter.kind} "
                             "has no parameters; drop init_from or pick a learnable kind.")
        if not os.path.isfile(path):
            raise ValueError(f"drafter.init_from={path} is not a file; pass the --out file of "
                             "tools/distill_drafter.py.")
        module = self.online_drafter.trainable.module
        try:
            module.load_state_dict(torch.load(path, map_location=self.env.device,
                                              weights_only=True))
        except (RuntimeError, KeyError) as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"drafter.init_from={path} does not fit a {self.cfg.drafter.kind} "
                             f"drafter of this config ({first}); check drafter.kind, "
                             "draft_flavor, draft_layers and num_heads.") from None
        log.info("drafter %s initialised from %s", self.cfg.drafter.kind, path)
        return True

    def _dp_comm(self) -> bool:
        return self.env.world_size > 1 and self.dims.dp > 1

    def _local_batch(self, step: int):
        batch = self.data.global_batch(step)
        dp_rank = self._dp_rank()
        per_rank = self.cfg.training.global_batch_size // self.dims.dp
        return batch, batch.slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)

    def _all_reduce_dp(self, value: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self._dp_comm():
            dist.all_reduce(value, op=op, group=self.dims.mesh("dp").get_group())
        return value

    def train_step(self, step: int) -> dict:
        start = time.perf_counter()
        global_batch, local = self._local_batch(step)
        # Every rank holds the global batch, so the normaliser needs no communication.
        global_tokens = global_batch.loss_mask.sum().clamp(min=1)
        accum = self.cfg.training.grad_accum_steps
        micro = local.inputs.shape[0] // accum
        loss_sum = torch.zeros((), device=self.env.device)
        self.model.train()
        for i in range(accum):
            mb = local.slice(i * micro, (i + 1) * micro)
            logits = self.model(mb.inputs.to(self.env.device))
            mb_loss_sum = token_loss_sum(logits, mb.labels.to(self.env.device),
                                         mb.loss_mask.to(self.env.device))
            loss = mb_loss_sum / global_tokens.to(self.env.device)
            aux = self.model.aux_loss()
            if aux is not None:
                loss = loss + aux / (accum * self.dims.dp)
            loss.backward()
            loss_sum += mb_loss_sum.detach()
        reduce_partial_grads(self.model)
        grad_norm = clip_grad_norm_(self.model.parameters(), self.cfg.training.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = (self._all_reduce_dp(loss_sum) / global_tokens.to(loss_sum.device)).item()
        elapsed = time.perf_counter() - start
        tokens = int((global_batch.inputs != self.tokenizer.pad_id).sum())
        return {"step": step, "phase": "sft", "loss": loss_value, "grad_norm": grad_norm,
                "lr": lr, "tokens_per_s": tokens / elapsed, "step_time_s": elapsed,
                "memory_gib": memory_gib(self.env.device)}

    def evaluate(self, count: int) -> dict:
        """Greedy accuracy on `count` held-out problems (a stream disjoint from the training
        data); each data-parallel rank solves its share."""
        rng = random.Random(f"eval:{self.cfg.job.seed}")
        problems = [self.task.sample(rng) for _ in range(count)]
        mine = problems[self._dp_rank()::self.dims.dp]
        tok = self.tokenizer
        prompts = [encode_prompt(tok, p.prompt) for p in mine]
        self.model.eval()
        max_new = self.cfg.training.seq_len - max(map(len, prompts))
        outputs = greedy_decode(self.model, prompts, max_new, tok.eos_id, tok.pad_id,
                                self.env.device, tok.vocab_size, self.dims.tp,
                                group=self.learner_group)
        correct = sum(self.task.reward(problem, tok.decode(ids))
                      for problem, ids in zip(mine, outputs, strict=True))
        total = self._all_reduce_dp(torch.tensor([correct, len(mine)], dtype=torch.float64,
                                                 device=self.env.device))
        record = {"step": self.step, "phase": "eval", "accuracy": float(total[0] / total[1]),
                  "num_problems": int(total[1])}
        self.evals.append(record)
        return record

    def _save(self) -> None:
        self.checkpoint.save(self.step, {
            "data_position": self.step, "policy_version": self.policy_version,
            "drafter_warm": self.drafter_warm,
            "drafter_version": self.online_drafter.version if self.online_drafter else 0})

    def _maybe_save(self, last_step: int) -> None:
        ckpt = self.cfg.checkpoint
        if ckpt.enable and (self.step % ckpt.interval == 0 or self.step == last_step):
            self._save()

    def train(self) -> None:
        sft_steps, rl_cfg = self.cfg.sft.steps, self.cfg.rl
        total = sft_steps + rl_cfg.steps
        if not self.is_learner:
            self.worker.run(max(self.step, sft_steps) + 1, total)
            return
        if self.step >= total:
            log.warning("checkpoint is already at step %d >= sft.steps + rl.steps = %d: nothing "
                        "to train. Use a new job.dump_folder or --checkpoint.resume=false to "
                        "start over.", self.step, total)
        if self.step < sft_steps:
            if self.cfg.sft.eval_problems and self.step == 0:
                self.metrics.log(self.evaluate(self.cfg.sft.eval_problems))
            while self.step < sft_steps:
                self.step += 1
                self.metrics.log(self.train_step(self.step))
                self._maybe_save(sft_steps)
            if self.cfg.sft.eval_problems:
                self.metrics.log(self.evaluate(self.cfg.sft.eval_problems))
        if self.step < total:
            self._train_rl(total)

    # ------------------------------------------------------------------ RL
    def _train_rl(self, total: int) -> None:
        self._warm_start_drafter()
        count = self.cfg.rl.eval_problems
        before = None
        if count:
            previous = self.evals[-1] if self.evals else None
            fresh = previous is not None and previous["step"] == self.step and \
                previous["num_problems"] == count
            before = previous if fresh else self.evaluate(count)
            if not fresh:
                self.metrics.log(before)
        start, first_step = time.perf_counter(), self.step
        if self.async_mode:  # the schedule counts steps from here
            self.rl_start = self.step
            self._send_weights()
        while self.step < total:
            self.step += 1
            record = self.rl_step_async(self.step) if self.async_mode else self.rl_step(self.step)
            self.rl_records.append(record)
            self.metrics.log(record)
            self._maybe_save(total)
        # Wall time of the RL loop, including what no step record holds (the first weight sync).
        self.metrics.log({"step": self.step, "phase": "rl_total", "steps": self.step - first_step,
                          "wall_s": time.perf_counter() - start})
        if self.async_mode:  # the last sends are non-blocking: see them received
            self.policy_sync.wait()
            self.drafter_sync.wait()
        after = None
        if count:
            after = self.evaluate(count)
            self.metrics.log(after)
        if self.is_main:
            print(summary_table(self.rl_records, before, after), flush=True)

    def _warm_start_drafter(self) -> None:
        """Distil a learnable drafter from the current policy on the task (once per run)."""
        if self.online_drafter is None or self.drafter_warm:
            return
        steps = self.cfg.drafter.warmup_steps
        trainable = self.online_drafter.trainable
        start = time.perf_counter()
        if steps:
            with colocated_policy(self.model, self._dims_or_none(), self._builder()) as view:
                trainable.distill(view, self.task, self.tokenizer, steps, lr=self.cfg.drafter.lr,
                                  seed=self.cfg.job.seed, seq_len=self.cfg.training.seq_len,
                                  log=log.info if self.is_main else None)
            if self.dims.world_size > 1:  # every learner replica starts from rank 0's drafter
                for param in trainable.module.parameters():
                    dist.broadcast(param.data, src=0, group=self.learner_group)
        self.drafter_warm = True
        self.metrics.log({"step": self.step, "phase": "drafter_warmup", "steps": steps,
                          "kind": trainable.kind, "time_s": time.perf_counter() - start})

    def _dims_or_none(self):
        return self.dims if self.env.world_size > 1 else None

    def _builder(self):
        return get_model_spec(self.cfg.model.name).builder

    def _rl_prompts(self, step: int, shard: int | None = None, shards: int | None = None):
        """A share of the step's prompts (this data-parallel rank's by default), each repeated
        group_size times."""
        rl = self.cfg.rl
        rng = random.Random(f"rl:{self.cfg.job.seed}:{step}")
        problems = [self.task.sample(rng) for _ in range(rl.prompts_per_step)]
        if shard is None:
            shard, shards = self._dp_rank(), self.dims.dp
        per_rank = rl.prompts_per_step // shards
        first = shard * per_rank
        mine = problems[first:first + per_rank]
        samples = [(first + i, problem) for i, problem in enumerate(mine)
                   for _ in range(rl.group_size)]
        prompts = [encode_prompt(self.tokenizer, problem.prompt) for _, problem in samples]
        return prompts, [problem for _, problem in samples], [gid for gid, _ in samples]

    def _dp_rank(self) -> int:
        return self.dims.dp_rank() if self.env.world_size > 1 else 0

    def _sampling_params(self, step: int, shard: int | None = None) -> SamplingParams:
        r = self.cfg.rollout
        shard = self._dp_rank() if shard is None else shard
        # Tensor-parallel peers share a shard, hence the seed: they must decode in lockstep.
        seed = (self.cfg.job.seed * 1_000_003 + step) * 1009 + shard
        return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=r.max_new_tokens,
                              stop_token_ids=(self.tokenizer.eos_id,), seed=seed)

    def _engine(self, view, prompts) -> RolloutEngine:
        d, r = self.cfg.drafter, self.cfg.rollout
        if self.online_drafter is not None:
            self.online_drafter.trainable.bind(view)
        max_len = min(view.args.max_seq_len, max(map(len, prompts)) + r.max_new_tokens + 1)
        return RolloutEngine(view, self.drafter, num_draft_tokens=d.num_draft_tokens,
                             max_batch_size=r.max_batch_size, max_seq_len=max_len,
                             vocab_size=self.tokenizer.vocab_size, adaptive=self._adaptive)

    def _rewards(self, problems, completions) -> list[float]:
        return [self.task.reward(problem, self.tokenizer.decode(c.token_ids))
                for problem, c in zip(problems, completions, strict=True)]

    def _rollout_batch(self, prompts, completions, rewards: list, policy_versions: list,
                       drafter_versions: list) -> RolloutBatch:
        """Training tensors of this rank's samples (whole groups, adjacent), sync or async."""
        rl, device = self.cfg.rl, self.env.device
        inputs, targets, mask, behaviour = assemble(prompts, completions,
                                                    self.tokenizer.pad_id, device)
        rewards = torch.tensor(rewards)
        advantages = group_advantages(rewards, rl.group_size, rl.normalize_std)
        if rl.dynamic_sampling:  # all-equal groups carry no gradient: leave them out
            mask = mask * informative_groups(rewards, rl.group_size).to(mask).unsqueeze(1)
        return RolloutBatch(inputs, targets, mask, behaviour, rewards.to(device),
                            advantages.to(device), torch.tensor(policy_versions),
                            torch.tensor(drafter_versions))

    def _recompute(self, view, batch: RolloutBatch, params, global_tokens: float) -> dict:
        """Learner logprobs (ratio denominator and mismatch), reference logprobs, and the
        drafter's online update, all from no-grad forwards of the unsharded learner."""
        vocab, parts = self.tokenizer.vocab_size, self.cfg.training.grad_accum_steps
        old, ref, drafter_time = torch.zeros_like(batch.mask), None, 0.0
        online = self.online_drafter if self.cfg.drafter.online else None
        if online is not None:
            online.begin()
        for start, stop, logits, hidden in forward_chunks(view, batch, parts):
            old[start:stop] = learner_logprobs(logits, batch, start, stop, params, vocab)
            if online is not None:
                t0 = time.perf_counter()
                online.accumulate(batch, start, stop, logits, hidden, view, vocab,
                                  global_tokens)
                drafter_time += time.perf_counter() - t0
        if self.cfg.rl.kl_coef > 0:
            if self.reference is None:
                import copy

                self.reference = copy.deepcopy(view)  # the policy at RL start, kept whole
            ref = torch.zeros_like(batch.mask)
            for start, stop, logits, _ in forward_chunks(self.reference, batch, parts):
                ref[start:stop] = learner_logprobs(logits, batch, start, stop, params, vocab)
        batch.old_logprobs, batch.ref_logprobs = old, ref
        metrics = {"time_drafter_s": drafter_time}
        if online is not None:
            t0 = time.perf_counter()
            metrics.update(online.step())
            metrics["time_drafter_s"] += time.perf_counter() - t0
        return metrics

    def _train_policy(self, batch: RolloutBatch, params) -> dict:
        rl, accum = self.cfg.rl, self.cfg.training.grad_accum_steps
        loss_fn, vocab = build_loss(rl.loss), self.tokenizer.vocab_size
        parts = chunks(batch.inputs.shape[0], rl.minibatches)
        counts = torch.tensor([float(batch.mask[a:b].sum()) for a, b in parts], dtype=torch.float64)
        counts = self._all_reduce_dp(counts.to(self.env.device)).clamp(min=1)
        sums = {"loss": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0, "kl": 0.0}
        grad_norms = []
        self.model.train()
        for index, (first, last) in enumerate(parts):
            minibatch = batch.slice(first, last)
            for start, stop in chunks(last - first, accum):
                micro = minibatch.slice(start, stop)
                logits = self.model(micro.inputs)
                logprobs = token_logprobs(logits, micro.targets, params, vocab)
                loss, metrics = loss_fn(logprobs, micro.old_logprobs, micro.advantages,
                                        micro.mask, counts[index].float(), rl.clip_low,
                                        rl.clip_high, micro.ref_logprobs, rl.kl_coef,
                                        micro.is_weights)
                aux = self.model.aux_loss()
                if aux is not None:
                    loss = loss + aux / (accum * self.dims.dp * len(parts))
                loss.backward()
                sums["loss"] += loss.item() / len(parts)
                for key, value in metrics.items():
                    sums[key] += value.item() / len(parts)
            reduce_partial_grads(self.model)
            grad_norms.append(clip_grad_norm_(self.model.parameters(),
                                              self.cfg.training.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.policy_version += 1
        totals = self._all_reduce_dp(torch.tensor(list(sums.values()), dtype=torch.float64,
                                                  device=self.env.device))
        result = dict(zip(sums, totals.tolist(), strict=True))
        if rl.kl_coef == 0:
            result.pop("kl")
        result["grad_norm"] = max(grad_norms)
        return result

    def rl_step(self, step: int) -> dict:
        start = time.perf_counter()
        prompts, problems, group_ids = self._rl_prompts(step)
        params = self._sampling_params(step)
        lr = self.optimizer.param_groups[0]["lr"]
        gather_start = time.perf_counter()
        with colocated_policy(self.model, self._dims_or_none(), self._builder()) as view:
            t0 = time.perf_counter()
            time_gather = t0 - gather_start
            engine = self._engine(view, prompts)
            completions = engine.generate(prompts, params, group_ids)
            time_rollout = time.perf_counter() - t0
            count = len(completions)
            drafter_version = self.online_drafter.version if self.online_drafter else 0
            batch = self._rollout_batch(prompts, completions,
                                        self._rewards(problems, completions),
                                        [self.policy_version] * count, [drafter_version] * count)
            global_tokens = float(self._all_reduce_dp(batch.mask.sum().double()))
            t1 = time.perf_counter()
            extra = self._recompute(view, batch, params, max(global_tokens, 1.0))
            time_logprob = time.perf_counter() - t1 - extra["time_drafter_s"]
        t2 = time.perf_counter()
        time_reshard = t2 - t1 - time_logprob - extra["time_drafter_s"]
        trained = self._train_policy(batch, params)
        time_train = time.perf_counter() - t2
        record = {"step": step, "phase": "rl", "lr": lr, **trained, **extra}
        record.update(self._rollout_metrics(batch, completions, engine.last_stats, time_rollout))
        record.update(time_rollout_s=time_rollout, time_logprob_s=time_logprob,
                      time_train_s=time_train, time_gather_s=time_gather,
                      time_reshard_s=time_reshard, step_time_s=time.perf_counter() - start,
                      memory_gib=memory_gib(self.env.device))
        return record

    # ------------------------------------------------------------------ async RL (learner)
    def _send_weights(self) -> dict:
        """Broadcast the current policy (and drafter) to the rollout mesh, if a later batch
        can still use it (rl/async_rl.py schedule)."""
        from titan_spec.rl.async_rl import syncs_sent

        rl, start_step = self.cfg.rl, self.rl_start
        total = self.cfg.sft.steps + rl.steps
        done = self.step - start_step  # steps since the start: sync number done + 1
        if done + 1 > syncs_sent(total - start_step, rl.max_policy_lag, rl.stale_policy):
            return {}
        report = self.policy_sync.send(self.model, self.policy_version)
        sent, seconds = report.bytes, report.seconds
        if self.online_drafter is not None:
            drafter = self.drafter_sync.send(self.online_drafter.trainable.module,
                                             self.online_drafter.version)
            sent, seconds = sent + drafter.bytes, seconds + drafter.seconds
        return {"weight_sync_bytes": sent, "time_weight_sync_s": seconds}

    def _receive_rollouts(self) -> list:
        """Learner rank 0 takes one message per rollout replica; every learner rank gets all."""
        from titan_spec.rl.async_rl import recv_object

        messages = [None]
        if self.env.rank == 0:
            tp, first = self.cfg.parallelism.rollout.tp, self.dims.world_size
            messages = [[recv_object(first + replica * tp)
                         for replica in range(self.rollout_dims.dp)]]
        if self.dims.world_size > 1:
            dist.broadcast_object_list(messages, src=0, group=self.learner_group)
        return messages[0]

    def rl_step_async(self, step: int) -> dict:
        from titan_spec.rl.async_rl import truncated_is_weights
        from titan_spec.rollout.engine import Completion

        start = time.perf_counter()
        messages = self._receive_rollouts()
        waited = time.perf_counter() - start
        rl = self.cfg.rl
        fields = ("prompts", "token_ids", "logprobs", "rewards")
        merged = {key: [x for m in messages for x in getattr(m, key)] for key in fields}
        versions = [m.policy_version for m in messages for _ in m.prompts]
        per_rank = len(merged["prompts"]) // self.dims.dp
        mine = slice(self._dp_rank() * per_rank, (self._dp_rank() + 1) * per_rank)
        completions = [Completion(ids, lps) for ids, lps in
                       zip(merged["token_ids"][mine], merged["logprobs"][mine], strict=True)]
        drafter_versions = [m.drafter_version for m in messages for _ in m.prompts]
        batch = self._rollout_batch(merged["prompts"][mine], completions,
                                    merged["rewards"][mine], versions[mine],
                                    drafter_versions[mine])
        lags = self.policy_version - batch.policy_versions
        stale = lags > rl.max_policy_lag
        assert rl.stale_policy == "drop" or not stale.any(), "the schedule bounds the lag"
        batch.mask = batch.mask * (~stale).to(batch.mask).unsqueeze(1)  # drop: out of the loss
        params = self._sampling_params(step)
        global_tokens = float(self._all_reduce_dp(batch.mask.sum().double()))
        t1 = time.perf_counter()
        with colocated_policy(self.model, self._dims_or_none(), self._builder()) as view:
            extra = self._recompute(view, batch, params, max(global_tokens, 1.0))
        time_logprob = time.perf_counter() - t1 - extra["time_drafter_s"]
        batch.is_weights = truncated_is_weights(batch.old_logprobs, batch.behaviour_logprobs,
                                                lags, batch.mask, rl.is_cap)
        t2 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        # Every group dropped: no update (an optimizer step on zero gradients still moves).
        trained = self._train_policy(batch, params) if global_tokens > 0 else {}
        time_train = time.perf_counter() - t2
        synced = self._send_weights()
        record = {"step": step, "phase": "rl", "lr": lr, **trained, **extra, **synced}
        record.update(self._async_metrics(batch, messages, lags))
        record.update(time_waiting_for_rollout_s=waited, time_logprob_s=time_logprob,
                      time_train_s=time_train, step_time_s=time.perf_counter() - start,
                      memory_gib=memory_gib(self.env.device))
        return record

    def _async_metrics(self, batch: RolloutBatch, messages, lags) -> dict:
        on_policy = (lags == 0).to(batch.mask.device).unsqueeze(1) * batch.mask
        gap_sum, gap_max, gap_n = logprob_mismatch(batch.behaviour_logprobs, batch.old_logprobs,
                                                   on_policy)
        weights = batch.is_weights[batch.mask > 0]
        dropped = float((lags > self.cfg.rl.max_policy_lag).sum())
        local = torch.tensor([float(lags.sum()), lags.numel(), float(weights.sum()),
                              weights.numel(), float(gap_sum), float(gap_n), dropped],
                             dtype=torch.float64, device=self.env.device)
        sums = self._all_reduce_dp(local).tolist()
        maxima = self._all_reduce_dp(torch.tensor(
            [float(lags.max()), float(weights.max()) if weights.numel() else 0.0,
             float(gap_max)], dtype=torch.float64, device=self.env.device),
            op=dist.ReduceOp.MAX).tolist()
        stats = [m.stats for m in messages]
        k = len(stats[0]["drafted_per_position"])
        rates, collapsed = self._acceptance(
            [sum(s["accepted_per_position"][i] for s in stats) for i in range(k)],
            [sum(s["drafted_per_position"][i] for s in stats) for i in range(k)])
        tokens = sum(s["tokens"] for s in stats)
        rewards = [r for m in messages for r in m.rewards]
        lengths = [len(ids) for m in messages for ids in m.token_ids]
        return {
            "reward_mean": sum(rewards) / len(rewards),
            "accuracy": sum(r >= 1 for r in rewards) / len(rewards),
            "response_len_mean": sum(lengths) / len(lengths),
            "time_rollout_s": max(s["time_generate_s"] for s in stats),
            # The rollout side's idle time before this batch (waiting for the learner).
            "time_rollout_waiting_for_weights_s": max(s["time_waiting_for_weights_s"]
                                                      for s in stats),
            "time_rollout_inflight_weights_s": max(s["time_inflight_weights_s"] for s in stats),
            "rollout_tokens_per_s": tokens / max(max(s["time_s"] - s["time_inflight_weights_s"]
                                                     for s in stats), 1e-9),
            "acceptance_length": tokens / max(sum(s["sequence_steps"] for s in stats), 1),
            "acceptance_rate_per_position": rates,
            "policy_lag_mean": sums[0] / max(sums[1], 1), "policy_lag_max": int(maxima[0]),
            "is_weight_mean": sums[2] / max(sums[3], 1), "is_weight_max": maxima[1],
            # Samples older than max_policy_lag, left out of the loss (stale_policy=drop).
            "dropped_fraction": sums[6] / max(sums[1], 1),
            "logprob_mismatch_max": maxima[2], "logprob_mismatch_mean": sums[4] / max(sums[5], 1),
            "queue_depth": max(s.get("queue_depth", 0) for s in stats),
            "weight_updates_in_batch": max(s["weight_updates_in_batch"] for s in stats),
            "policy_version": int(batch.policy_versions.max()),
            "drafter_version": int(batch.drafter_versions.max()),
            "drafter_collapsed": bool(collapsed),
        }

    def _acceptance(self, accepted: list, drafted: list) -> tuple[list[float], bool]:
        """Per-position acceptance rates of the step, and whether the drafter has collapsed
        (warned about on rank 0)."""
        rates = [a / d if d else 0.0 for a, d in zip(accepted, drafted, strict=True)]
        collapsed = self.drafter is not None and self.is_main and check_acceptance(
            rates, self.cfg.drafter.collapse_threshold, self.cfg.drafter.kind)
        return rates, bool(collapsed)

    def _rollout_metrics(self, batch: RolloutBatch, completions, stats, time_rollout) -> dict:
        """Global (all data-parallel ranks) rollout statistics of this step."""
        k = len(stats["drafted_per_position"])
        gap_sum, gap_max, gap_count = logprob_mismatch(batch.behaviour_logprobs,
                                                       batch.old_logprobs, batch.mask)
        lengths = [len(c.token_ids) for c in completions]
        sums = torch.tensor(
            [float(batch.rewards.sum()), float((batch.rewards >= 1).sum()), len(completions),
             sum(lengths), stats["tokens"], stats["sequence_steps"], float(gap_sum),
             float(gap_count), float((batch.advantages != 0).sum())]
            + stats["accepted_per_position"] + stats["drafted_per_position"],
            dtype=torch.float64, device=self.env.device)
        sums = self._all_reduce_dp(sums).tolist()
        maxima = self._all_reduce_dp(torch.tensor([float(gap_max), time_rollout],
                                                  dtype=torch.float64, device=self.env.device),
                                     op=dist.ReduceOp.MAX).tolist()
        rewards, correct, samples, length_sum, tokens, seq_steps, gap, gap_n, nonzero = sums[:9]
        rates, collapsed = self._acceptance(sums[9:9 + k], sums[9 + k:])
        return {
            "reward_mean": rewards / samples, "accuracy": correct / samples,
            "response_len_mean": length_sum / samples,
            "rollout_tokens_per_s": tokens / max(maxima[1], 1e-9),
            "acceptance_length": tokens / max(seq_steps, 1),
            "acceptance_rate_per_position": rates,
            "logprob_mismatch_max": maxima[0], "logprob_mismatch_mean": gap / max(gap_n, 1),
            "nonzero_advantage_fraction": nonzero / samples,
            "policy_version": int(batch.policy_versions.max()),
            "drafter_version": int(batch.drafter_versions.max()),
            "drafter_collapsed": bool(collapsed),
            "kv_cache_bytes": stats["kv_cache_bytes"],
        }

    def close(self) -> None:
        self.metrics.close()
        if dist.is_initialized():
            # Without the barrier a rank that finishes first can tear gloo down while a peer's
            # last collective is still in flight (seen as 'terminate called' aborts).
            dist.barrier()
            dist.destroy_process_group()
