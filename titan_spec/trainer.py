"""The training loop as a readable recipe. This issue's stage is SFT (warm-start); the RL stages
plug in after it."""

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
from titan_spec.components.lr_scheduler import build_lr_scheduler
from titan_spec.components.metrics import MetricsLogger, memory_gib
from titan_spec.components.optimizer import build_optimizer, clip_grad_norm_
from titan_spec.config import to_toml
from titan_spec.data.sft import SFTDataSource
from titan_spec.data.tokenizer import build_tokenizer, encode_prompt
from titan_spec.models import build_model, get_model_spec
from titan_spec.parallel.init import materialize_and_init
from titan_spec.parallel.parallel_dims import ParallelDims
from titan_spec.parallel.tensor_parallel import reduce_partial_grads
from titan_spec.rl.tasks import build_task
from titan_spec.rollout.greedy import greedy_decode

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

    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    args = get_model_spec(cfg.model.name).args(cfg.model.flavor)
    if dims.tp > 1:
        check_tp_divisibility(args, dims.tp)
    if dims.ep > 1 and (not args.is_moe or args.num_experts % dims.ep):
        raise ValueError(f"parallelism.ep={dims.ep} needs an MoE flavor whose num_experts it "
                         f"divides; {cfg.model.flavor} has {args.num_experts} experts.")
    if 0 < cfg.sft.eval_problems < dims.dp:
        raise ValueError(f"sft.eval_problems={cfg.sft.eval_problems} is fewer than the {dims.dp} "
                         "data-parallel ranks that share them; use at least that many, or 0.")
    per_step = dims.dp * cfg.training.grad_accum_steps
    if cfg.training.global_batch_size % per_step:
        raise ValueError(
            f"training.global_batch_size={cfg.training.global_batch_size} must be divisible by "
            f"data-parallel degree {dims.dp} x grad_accum_steps {cfg.training.grad_accum_steps}"
            f" = {per_step}; e.g. use global_batch_size="
            f"{max(per_step, cfg.training.global_batch_size // per_step * per_step)}."
        )
    return dims


def token_loss_sum(logits, labels, loss_mask) -> torch.Tensor:
    """Sum over valid tokens of the next-token cross-entropy (float32)."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (losses * loss_mask.flatten()).sum()


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.env = setup_distributed(cfg.training)
        self.dims = preflight(cfg, self.env.world_size)
        if self.env.world_size > 1:
            self.dims.build_meshes(self.env.device.type)
        self.is_main = self.env.rank == 0
        torch.manual_seed(cfg.job.seed)
        self.tokenizer = build_tokenizer(cfg.model.tokenizer)
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.lr_scheduler, cfg.sft.steps)
        self.task = build_task(cfg.sft.task, min_digits=cfg.sft.min_digits,
                               max_digits=cfg.sft.max_digits)
        self.data = SFTDataSource(self.task, self.tokenizer, cfg.training.global_batch_size,
                                  cfg.training.seq_len, cfg.job.seed)
        self.checkpoint = CheckpointManager(cfg.checkpoint, cfg.job.dump_folder, self.model,
                                            self.optimizer, self.scheduler, self.env.rank,
                                            self.env.world_size)
        self.step = 0
        resume_from = self.checkpoint.find_resume_point() if cfg.checkpoint.enable else None
        if resume_from is not None:
            self.step = self.checkpoint.load(resume_from)["step"]
        self.metrics = MetricsLogger(cfg.job.dump_folder, cfg.metrics, cfg.job.name,
                                     self.is_main, resumed=resume_from is not None)
        if self.is_main:
            os.makedirs(cfg.job.dump_folder, exist_ok=True)
            with open(os.path.join(cfg.job.dump_folder, "config.toml"), "w") as f:
                f.write(to_toml(cfg))

    def _build_model(self):
        cfg = self.cfg
        spec = get_model_spec(cfg.model.name)
        model = build_model(cfg.model.name, cfg.model.flavor, device="meta")
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

    def _local_batch(self, step: int):
        batch = self.data.global_batch(step)
        dp_rank = self.dims.dp_rank() if self.env.world_size > 1 else 0
        per_rank = self.cfg.training.global_batch_size // self.dims.dp
        return batch, batch.slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)

    def _all_reduce_dp(self, value: torch.Tensor) -> torch.Tensor:
        if self.env.world_size > 1 and self.dims.dp > 1:
            dist.all_reduce(value, group=self.dims.mesh("dp").get_group())
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

    def evaluate(self) -> dict:
        """Greedy accuracy on held-out problems (a stream disjoint from the training data);
        each data-parallel rank solves its share."""
        count = self.cfg.sft.eval_problems
        rng = random.Random(f"eval:{self.cfg.job.seed}")
        problems = [self.task.sample(rng) for _ in range(count)]
        dp_rank = self.dims.dp_rank() if self.env.world_size > 1 else 0
        mine = problems[dp_rank::self.dims.dp]
        tok = self.tokenizer
        prompts = [encode_prompt(tok, p.prompt) for p in mine]
        self.model.eval()
        max_new = self.cfg.training.seq_len - max(map(len, prompts))
        outputs = greedy_decode(self.model, prompts, max_new, tok.eos_id, tok.pad_id,
                                self.env.device, tok.vocab_size, self.dims.tp)
        correct = sum(self.task.reward(problem, tok.decode(ids))
                      for problem, ids in zip(mine, outputs, strict=True))
        total = self._all_reduce_dp(torch.tensor([correct, len(mine)], dtype=torch.float64,
                                                 device=self.env.device))
        return {"step": self.step, "phase": "eval", "accuracy": float(total[0] / total[1]),
                "num_problems": int(total[1])}

    def train(self) -> None:
        total = self.cfg.sft.steps
        if self.cfg.sft.eval_problems and self.step == 0:
            self.metrics.log(self.evaluate())
        if self.step >= total:
            log.warning("checkpoint is already at step %d >= sft.steps=%d: nothing to train. "
                        "Use a new job.dump_folder or --checkpoint.resume=false to start over.",
                        self.step, total)
        ckpt = self.cfg.checkpoint
        while self.step < total:
            self.step += 1
            self.metrics.log(self.train_step(self.step))
            if ckpt.enable and (self.step % ckpt.interval == 0 or self.step == total):
                self.checkpoint.save(self.step, {"data_position": self.step})
        if self.cfg.sft.eval_problems and total > 0:
            self.metrics.log(self.evaluate())

    def close(self) -> None:
        self.metrics.close()
        if dist.is_initialized():
            # Without the barrier a rank that finishes first can tear gloo down while a peer's
            # last collective is still in flight (seen as 'terminate called' aborts).
            dist.barrier()
            dist.destroy_process_group()
