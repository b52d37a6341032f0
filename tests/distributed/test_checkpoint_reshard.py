"""Save with 2 ranks (FSDP2), resume with 1 rank and with 4 ranks (FSDP2 x TP): the resumed run
continues the straight run's losses and weights (DCP reshards on load)."""

import shutil

import pytest
import torch

from tests.helpers import run_distributed, run_trainer

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]
RTOL = 1e-4
# Adam divides by sqrt(v): an element whose gradient is ~0 can move by ~1e-6 on reduction-order
# noise alone. Gradient-scale mistakes show in the losses and grad norms, which Adam's
# scale-invariance would hide from weights anyway.
WEIGHT_ATOL = 2e-5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved2")
    run_distributed(2, "debug_model.toml", ["--sft.steps=5", "--checkpoint.interval=3",
                                            f"--job.dump_folder={folder}"], folder, stop_at=3)
    return folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    return run_trainer("debug_model.toml", ["--sft.steps=5", "--checkpoint.enable=false",
                                            f"--job.dump_folder={folder}"])


def _check(result, straight):
    assert result["steps"] == [4, 5]
    assert result["losses"] == pytest.approx(straight["losses"][3:], rel=RTOL)
    for name, tensor in straight["weights"].items():
        torch.testing.assert_close(result["weights"][name], tensor, rtol=RTOL, atol=WEIGHT_ATOL)


def test_resume_on_one_rank(saved, straight, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(saved / "checkpoint", folder / "checkpoint")
    _check(run_trainer("debug_model.toml", ["--sft.steps=5", f"--job.dump_folder={folder}"]),
           straight)


def test_resume_on_four_ranks_with_tp(saved, straight, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(saved / "checkpoint", folder / "checkpoint")
    result = run_distributed(4, "debug_model.toml",
                             ["--sft.steps=5", "--parallelism.tp=2", f"--job.dump_folder={folder}"],
                             tmp_path)
    _check(result, straight)
