"""An RL run stopped mid-RL and resumed equals the uninterrupted run step for step: the policy,
its optimizer, the drafter (not warmed up again), the versions and the KL reference (the
policy at RL start, saved with the checkpoint; a resume must not re-anchor it)."""

import shutil

import pytest

from tests.helpers import RL_FAST, compare_records, read_metrics, train_job

pytestmark = pytest.mark.slow
# Enough SFT for rewards of about a half: the policy moves away from the reference.
KL = RL_FAST + ["--sft.steps=40", "--task.arithmetic.max_digits=1", "--rl.steps=3",
                "--rl.kl_coef=0.01", "--rl.eval_problems=0", "--checkpoint.interval=41"]


def _rl(folder):
    return [r for r in read_metrics(folder) if r["phase"] == "rl"]


def test_resumed_kl_run_equals_the_straight_run(tmp_path):
    train_job("debug_model.toml", KL + [f"--job.dump_folder={tmp_path}/straight"])
    # The run stopped after step 41's checkpoint, as a crash would leave it: resume from it.
    shutil.copytree(tmp_path / "straight" / "checkpoint" / "step-41",
                    tmp_path / "resumed" / "checkpoint" / "step-41")
    train_job("debug_model.toml", KL + [f"--job.dump_folder={tmp_path}/resumed"])
    straight, again = _rl(tmp_path / "straight"), _rl(tmp_path / "resumed")
    assert [r["step"] for r in again] == [42, 43]
    assert straight[-1]["kl"] > 0 and straight[-1]["policy_version"] == 2
    assert "drafter_warmup" not in [r["phase"] for r in read_metrics(tmp_path / "resumed")]
    errors = compare_records(straight[1:], again)
    assert not errors, "\n".join(errors)
