"""The job on one rank. Learner ranks run a LearnerJob: SFT -> drafter warm start -> RL (the
sync driver, or the learner side of async RL), checkpointing one JobState. Under async RL the
last ranks run a RolloutWorker instead, built from the parts it needs."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from titan_spec.components import run_status, stop_signal
from titan_spec.components.checkpoint import CheckpointManager, find_resume_point
from titan_spec.components.job_state import JobState
from titan_spec.components.lr_scheduler import refresh_after_load
from titan_spec.components.metrics import MetricsLogger
from titan_spec.components.run_lock import RunLock
from titan_spec.config import to_toml
from titan_spec.data.sft import SFTDataSource
from titan_spec.data.tokenizer import build_tokenizer
from titan_spec.drafters.runtime import DrafterRuntime
from titan_spec.evaluate import evaluate
from titan_spec.formats.description import describe
from titan_spec.formats.hf_export import barrier, export_hf
from titan_spec.formats.initial_load import hf_folder, tokenizer_spec
from titan_spec.learner import Learner
from titan_spec.preflight import preflight
from titan_spec.rl.async_rl import (
    AsyncRL,
    RolloutWorker,
    WeightPublisher,
    build_async_layout,
    share_start_point,
)
from titan_spec.rl.data import RLData
from titan_spec.rl.summary import summary_table
from titan_spec.rl.sync_rl import SyncRL
from titan_spec.rl.tasks import task_from_config
from titan_spec.runtime import setup_distributed
from titan_spec.sft import sft_step

log = logging.getLogger("titan_spec")


def build_rank(cfg):
    """-> (env, the role this rank plays: a LearnerJob or a RolloutWorker)."""
    env = setup_distributed(cfg.training, cfg.comm.timeout_s)
    run_status.set_rank(env.rank, cfg.job.dump_folder)
    dims = preflight(cfg, env.world_size)
    layout = build_async_layout(cfg, env) if cfg.async_rl.rollout_ranks else None
    if layout is not None:
        dims = layout.learner_dims
    elif env.world_size > 1:
        dims.build_meshes(env.device.type)
    torch.manual_seed(cfg.job.seed)
    tokenizer = build_tokenizer(tokenizer_spec(cfg), cfg.task.chat_template)
    task = task_from_config(cfg.task)
    rl_data = RLData(task, tokenizer, cfg.rl, cfg.rollout, cfg.job.seed, env.device)
    if layout is not None and not layout.learner_dims.contains(env.rank):
        return env, RolloutWorker.build(cfg, env, layout, rl_data)
    # Held before anything in the folder is read or written; LearnerJob.close() releases it.
    lock = RunLock(cfg.job.dump_folder, cfg.job.name).acquire() if env.is_main else None
    try:
        return env, LearnerJob(cfg, env, dims, layout, tokenizer, task, rl_data, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


class LearnerJob:
    def __init__(self, cfg, env, dims, layout, tokenizer, task, rl_data, lock=None):
        self.cfg, self.env, self.dims, self.layout = cfg, env, dims, layout
        self.lock = lock
        self.tokenizer, self.task = tokenizer, task
        self.group = layout.learner_group if layout is not None else None
        self.control = layout.learner_control if layout is not None else None
        # A run that will resume need not read its initial weights first.
        self.resume_path = find_resume_point(cfg.checkpoint,
                                             Path(cfg.job.dump_folder) / cfg.checkpoint.folder,
                                             self.control)
        self.learner = Learner.build(cfg, dims, env.device, tokenizer.vocab_size,
                                     initial_weights=self.resume_path is None)
        self.drafters = DrafterRuntime.build(cfg.drafter, cfg.model, self.learner.model.args,
                                             self.learner.model, cfg.job.seed, env.device,
                                             dims.dp_group())
        self.state = JobState(drafter_warm=self.drafters.init_from(env.device, tokenizer,
                                                                   cfg.model.name))
        self.sft_data = SFTDataSource(task, tokenizer, cfg.training.global_batch_size,
                                      cfg.training.seq_len, cfg.job.seed)
        entries = self.drafters.checkpoint_entries()
        if self.learner.reference is not None:
            entries["reference"] = (self.learner.reference, None)
        self.checkpoint = CheckpointManager(cfg.checkpoint, cfg.job.dump_folder,
                                            self.learner.model, self.learner.optimizer,
                                            self.learner.scheduler, env.rank, dims.world_size,
                                            extra=entries, group=self.group,
                                            description=self._description())
        # The KL reference holds the policy at RL start (frozen then, or loaded with a resume).
        resumed, self.reference_ready = self._resume()
        if layout is not None:  # the rollout ranks learn where the run resumes
            share_start_point(self.state.step, self.state.policy_version)
            layout.policy_sync.prepare(self.learner.model)
        self.metrics = MetricsLogger(cfg.job.dump_folder, cfg.metrics, cfg.job.name,
                                     env.is_main, self.state.step if resumed else None)
        self.saved_step = self.state.step if resumed else None
        self.last_eval: dict | None = None
        self.rl = self._rl_driver(rl_data)
        if env.is_main:
            run_status.write_status("running", step=self.state.step)
            os.makedirs(cfg.job.dump_folder, exist_ok=True)
            with open(os.path.join(cfg.job.dump_folder, "config.toml"), "w") as f:
                f.write(to_toml(cfg))

    def _description(self) -> dict:
        trainable = self.drafters.trainable
        draft_args = getattr(trainable.module, "args", None) if trainable is not None else None
        return describe(self.cfg.model.name, self.learner.model.args,
                        trainable.kind if trainable is not None else None, draft_args)

    def _rl_driver(self, rl_data):
        cfg, is_main = self.cfg, self.env.is_main
        if self.layout is None:
            return SyncRL(self.learner, rl_data, self.drafters, self.state, cfg.rl,
                          cfg.rollout, is_main)
        publisher = WeightPublisher(self.layout.policy_sync, self.layout.drafter_sync,
                                    cfg.async_rl, cfg.sft.steps + cfg.rl.steps)
        return AsyncRL(self.learner, rl_data, self.drafters, self.state, self.layout.queue,
                       publisher, cfg.rl, cfg.async_rl, is_main)

    def _resume(self) -> tuple[bool, bool]:
        """Load the newest intact checkpoint (or checkpoint.load_path) -> (resumed, whether it
        held the KL reference)."""
        path = self.resume_path  # an explicit load_path counts even when saves are off
        if path is None:
            return False, False
        saved = self.checkpoint.load(path)
        refresh_after_load(self.learner.scheduler, self.cfg.optimizer.lr)
        self.state.restore(saved, saved["loaded_extra"])
        return True, "reference" in saved["loaded_extra"]

    # ------------------------------------------------------------ the phases
    def run(self) -> None:
        cfg, state = self.cfg, self.state
        sft_steps, total = cfg.sft.steps, cfg.sft.steps + cfg.rl.steps
        if state.step >= total:
            log.warning("checkpoint is already at step %d >= sft.steps + rl.steps = %d: nothing "
                        "to train. Use a new job.dump_folder or --checkpoint.resume=false to "
                        "start over.", state.step, total)
        if state.step < sft_steps:
            self._run_sft()
        if state.step < total:
            self._run_rl(total)
        if cfg.checkpoint.last_save_in_hf:
            run_status.set_phase("export")
            self.export_hf()
        if self.env.is_main:
            run_status.write_status("done", step=state.step)

    def _run_sft(self) -> None:
        cfg, state = self.cfg, self.state
        if cfg.sft.eval_problems and state.step == 0:
            self._evaluate(cfg.sft.eval_problems)
        while state.step < cfg.sft.steps:
            state.step += 1
            run_status.set_phase("sft", state.step)
            self.metrics.log(sft_step(self.learner, self.sft_data, state.step,
                                      self.tokenizer.pad_id))
            self.maybe_save(cfg.sft.steps)
            self._stop_if_asked(cfg.sft.steps + cfg.rl.steps)
        if cfg.sft.eval_problems:
            self._evaluate(cfg.sft.eval_problems)

    def _run_rl(self, total: int) -> None:
        state, count = self.state, self.cfg.rl.eval_problems
        self._warm_start_drafter()
        fresh = self.last_eval is not None and self.last_eval["step"] == state.step \
            and self.last_eval["num_problems"] == count
        if state.rl_start is None:
            state.rl_start = state.step
        # Resumed mid-RL: the steps and the evaluation before them come from metrics.jsonl,
        # so the summary covers the whole RL phase as an uninterrupted run's does.
        earlier = [r for r in self.metrics.records() if state.rl_start <= r["step"]]
        before = None if not count else self.last_eval if fresh else \
            self._evaluate(count) if state.rl_start == state.step else next(
                (r for r in earlier if r["phase"] == "eval" and r["step"] == state.rl_start),
                None)
        self._freeze_reference()
        start, first_step = time.perf_counter(), state.step
        records = [r for r in earlier if r["phase"] == "rl"]
        self.rl.begin()
        while state.step < total:
            state.step += 1
            run_status.set_phase("rl", state.step)
            records.append(self.rl.step(state.step))
            self.metrics.log(records[-1])
            self.maybe_save(total)
            self._stop_if_asked(total)
        run_status.set_phase("rl end")
        # Wall time of the RL loop, including what no step record holds (the first weight sync).
        self.metrics.log({"step": state.step, "phase": "rl_total", "steps": state.step - first_step,
                          "wall_s": time.perf_counter() - start})
        self.rl.end()
        after = self._evaluate(count) if count else None
        if self.env.is_main:
            print(summary_table(records, before, after), flush=True)

    def _evaluate(self, count: int) -> dict:
        cfg = self.cfg
        run_status.set_phase("eval", self.state.step)
        self.last_eval = evaluate(self.learner, self.task, self.tokenizer, count, cfg.job.seed,
                                  cfg.training.seq_len, self.state.step, group=self.group)
        self.metrics.log(self.last_eval)
        return self.last_eval

    def _warm_start_drafter(self) -> None:
        """Distil a learnable drafter from the current policy on the task (once per run)."""
        if self.drafters.online is None or self.state.drafter_warm:
            return
        run_status.set_phase("drafter warm-up", self.state.step)
        cfg = self.cfg
        record = self.drafters.warm_start(self.learner.verifier, self.task, self.tokenizer,
                                          cfg.training.seq_len, cfg.job.seed, self.env.is_main,
                                          self.dims.world_size, self.group)
        self.state.drafter_warm = True
        self.metrics.log({"step": self.state.step, **record})

    def _freeze_reference(self) -> None:
        """The KL reference is the policy at RL start: taken now, unless the checkpoint this
        run resumed from carried it."""
        if self.learner.reference is None or self.reference_ready:
            return
        if self.state.rl_start != self.state.step:
            log.warning("rl.kl_coef > 0 but the checkpoint (step %d) holds no KL reference: "
                        "the reference is the policy at step %d, not at RL start (step %d)",
                        self.state.step, self.state.step, self.state.rl_start)
        with self.learner.verifier() as view:
            self.learner.freeze_reference(view)
        self.reference_ready = True

    # ------------------------------------------------------------ checkpoints and metrics
    def maybe_save(self, last_step: int) -> None:
        ckpt, step = self.cfg.checkpoint, self.state.step
        if ckpt.enable and (step % ckpt.interval == 0 or step == last_step):
            self.save()

    def save(self) -> Path:
        # Before RL starts the reference holds nothing: leave it out of the checkpoint.
        skip = () if self.reference_ready else ("reference",)
        path = self.checkpoint.save(self.state.step, asdict(self.state), skip=skip)
        self.saved_step = self.state.step
        return path

    def _stop_if_asked(self, last_step: int) -> None:
        """Preemption: when any learner rank got SIGTERM / SIGUSR1, all of them stop after this
        step, with its checkpoint (the save is skipped when this step's is already written).
        The last step ends the run anyway: its evaluation and summary are not put off."""
        if self.state.step >= last_step or not stop_signal.agreed(self.control):
            return
        run_status.set_phase("preemption save", self.state.step)
        path = None
        if self.cfg.checkpoint.enable:
            path = self.checkpoint.step_folder(self.state.step)
            if self.saved_step != self.state.step:
                path = self.save()
        raise stop_signal.Preempted(stop_signal.received() or "a peer rank's signal",
                                    self.state.step, str(path) if path else None)

    def export_hf(self) -> None:
        """The policy (and a learnable drafter) as Hugging Face folders next to the
        checkpoints: <folder>/step-N-hf and step-N-hf-drafter."""
        ckpt, step = self.cfg.checkpoint, self.state.step
        out = Path(self.cfg.job.dump_folder) / ckpt.folder / f"step-{step}-hf"
        writer = self.env.rank == 0  # learner rank 0 (async learners come first)
        options = {"writer": writer, "max_shard_bytes": ckpt.export_shard_mib << 20,
                   "tokenizer": self.tokenizer}
        export_hf(self.learner.model, out, self.cfg.model.name, ckpt.export_dtype,
                  source_folder=hf_folder(self.cfg), **options)
        if self.drafters.trainable is not None:
            self.drafters.export(out.with_name(out.name + "-drafter"), self.cfg.model.name,
                                 ckpt.export_dtype, **options)
        barrier(self.control)

    def close(self) -> None:
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()
