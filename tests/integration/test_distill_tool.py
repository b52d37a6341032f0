import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import RL_FAST, read_metrics, run_trainer, train_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["draft_model", "mtp"])
def test_distill_tool_end_to_end(tmp_path, kind):
    run_trainer("debug_model.toml", [f"--job.dump_folder={tmp_path}", "--sft.steps=2",
                                     "--checkpoint.interval=2"])
    out = tmp_path / f"{kind}.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.distill_drafter", "--config", "debug_model.toml",
         "--checkpoint", str(tmp_path / "checkpoint" / "step-2"), f"--drafter.kind={kind}",
         "--drafter.distill_steps=3",
         "--out", str(out), "--eval-problems", "4", "--training.seq_len=64",
         "--task.arithmetic.max_digits=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["kind"] == kind and report["acceptance_length"] >= 1.0
    assert torch.load(out, weights_only=True)
    # The tool reads the job's [drafter] table: its output loads into the job as it is.
    rl_folder = tmp_path / "rl"
    train_job("debug_model.toml", RL_FAST + [f"--job.dump_folder={rl_folder}",
                                             f"--drafter.kind={kind}", f"--drafter.init_from={out}",
                                             "--rl.steps=1"])
    phases = [r["phase"] for r in read_metrics(rl_folder)]
    assert "rl" in phases and "drafter_warmup" not in phases


def test_distill_tool_rejects_a_non_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.distill_drafter", "--config", "debug_model.toml",
         "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.pt")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "not a DCP checkpoint step folder" in proc.stderr


def test_distill_tool_refuses_its_old_flags(tmp_path, capsys):
    from tools.distill_drafter import main

    assert main(["--config", "debug_model.toml", "--checkpoint", str(tmp_path),
                 "--out", str(tmp_path / "x.pt"), "--kind", "eagle"]) == 2
    assert "use --drafter.kind=... instead" in capsys.readouterr().err

