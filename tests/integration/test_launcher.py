"""run_train.sh end to end: spawning torchrun itself and as a worker under an external
`torchrun --no-python` (same losses), and an impossible layout refused before any worker."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import launcher_env, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--config", "debug_model.toml", "--sft.steps=6", "--rl.steps=0",
        "--metrics.enable_tensorboard=false",
        "--sft.eval_problems=8",
        "--checkpoint.enable=false", "--metrics.log_freq=2"]


def _launch(folder, *extra, torchrun=False):
    cmd = [str(ROOT / "run_train.sh"), *ARGS, f"--job.dump_folder={folder}", *extra]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "--no-python", *cmd]
    proc = subprocess.run(cmd, env=launcher_env(NPROC="2"), capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(folder)
    evals = [r for r in records if r["phase"] == "eval"]
    assert [(r["step"], r["num_problems"]) for r in evals] == [(0, 8), (6, 8)]
    return [r for r in records if r["phase"] == "sft"], proc.stdout


def test_launcher_modes_agree(tmp_path):
    """The launcher spawning torchrun itself, and run as a worker under an outside torchrun.
    (Layouts agreeing is the parity tests' job.)"""
    fsdp, stdout = _launch(tmp_path / "fsdp")
    worker, _ = _launch(tmp_path / "worker", torchrun=True)
    assert [r["step"] for r in fsdp] == list(range(1, 7))
    for key in ("step", "phase", "loss", "grad_norm", "lr", "tokens_per_s", "step_time_s",
                "memory_gib"):
        assert key in fsdp[0]
    assert [r["loss"] for r in worker] == pytest.approx([r["loss"] for r in fsdp], rel=1e-4)
    assert "sft step" in stdout  # console progress line from rank 0
    assert stdout.count("model qwen3/debug") == 1  # only rank 0 logs


def test_impossible_layout_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([str(ROOT / "run_train.sh"), *ARGS, "--parallelism.tp=3",
                           f"--job.dump_folder={tmp_path}"],
                          env=launcher_env(NPROC="2"), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "tp=3" in proc.stderr and "tp can be one of [1, 2]" in proc.stderr
    assert time.perf_counter() - start < 30  # no worker was started
    assert not (tmp_path / "metrics.jsonl").exists()
