"""bench.peers, second part: TRL's GRPOTrainer against our sync GRPO on the same exported
weights (with the character tokenizer's exported tokenizer.json), task (arithmetic), prompts
per step, group size, completion length, learning rate and clipping; one process, the same
threads. Reported: median seconds per RL step (after the first) and the mean reward of the
last steps. TRL is a `bench` extra (pip install -e '.[bench]'), not a runtime dependency."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _problems(count: int, seed: int):
    from titan_spec.rl.tasks.arithmetic import ArithmeticTask

    task, rng = ArithmeticTask(1, 3), random.Random(f"peers-grpo:{seed}")
    return task, [task.sample(rng) for _ in range(count)]


def run_trl(folder: Path, out: Path, steps: int, prompts: int, group: int, max_new: int,
            lr: float, threads: int, seed: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    task, problems = _problems(prompts * steps, seed)
    # Our prompts start with <bos> (encode_prompt); the exported tokenizer has no post-processor.
    data = Dataset.from_list([{"prompt": "<bos>" + p.prompt, "index": i}
                              for i, p in enumerate(problems)])

    def reward(completions, index, **_):
        return [task.reward(problems[i], text) for i, text in zip(index, completions, strict=True)]

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

    config = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=prompts * group,
        num_generations=group, max_completion_length=max_new, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, epsilon=0.2, epsilon_high=0.28,
        temperature=1.0, top_p=1.0, top_k=0, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, fp16=False, seed=seed,
        dataloader_num_workers=0, shuffle_dataset=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    trainer = GRPOTrainer(model=str(folder), reward_funcs=reward, args=config,
                          train_dataset=data, processing_class=tokenizer,
                          callbacks=[StepTimes()])
    trainer.train()
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    return {"step_s": statistics.median(times[1:] or times), "step_times_s": times,
            "reward_last": statistics.mean(rewards[-3:]), "rewards": rewards}


def run_ours(folder: Path, draft: Path | None, out: Path, steps: int, prompts: int, group: int,
             max_new: int, lr: float, threads: int, seed: int) -> dict:
    """Our sync GRPO through the launcher, one rank, from the same HF folder."""
    overrides = [
        "--config", "debug_model.toml", f"--checkpoint.initial_load_path={folder}",
        f"--job.dump_folder={out}", f"--job.seed={seed}", "--sft.steps=0",
        "--sft.eval_problems=0", f"--rl.steps={steps}", f"--rl.prompts_per_step={prompts}",
        f"--rl.group_size={group}", f"--rollout.max_new_tokens={max_new}",
        f"--rollout.max_batch_size={prompts * group}", f"--rl.lr={lr}", "--rl.warmup_steps=0",
        "--rl.eval_problems=0", "--rl.kl_coef=0", "--checkpoint.enable=false",
        "--metrics.enable_tensorboard=false", f"--training.threads_per_rank={threads}",
        "--training.seq_len=96", "--model.attention_fp64=false"]
    if draft is None:
        overrides.append("--drafter.kind=none")
    else:
        overrides += ["--drafter.kind=draft_model", f"--drafter.init_from={draft}",
                      "--drafter.num_draft_tokens=4"]
    env = dict(os.environ, NPROC="1", PYTHON=sys.executable)
    result = subprocess.run(["./run_train.sh", *overrides], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"our GRPO run failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r.get("phase") == "rl"]
    times = [r["step_time_s"] for r in rl]
    rewards = [r["reward_mean"] for r in rl]
    return {"step_s": statistics.median(times[1:] or times), "step_times_s": times,
            "reward_last": statistics.mean(rewards[-3:]), "rewards": rewards}
