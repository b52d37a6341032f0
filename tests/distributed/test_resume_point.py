"""The resume point of a multi-rank job: rank 0 alone reads and hashes the checkpoint files and
every rank takes its answer (a 235B checkpoint read once, not once per rank); a damaged newest
checkpoint is skipped on all ranks alike; when every one is damaged all ranks refuse with rank
0's message."""

import pytest

from tests.helpers import run_function

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]


def _step(folder, step: int, damaged: bool = False):
    from titan_spec.components.checkpoint import write_manifest

    path = folder / f"step-{step}"
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(bytes(range(256)) * 64)
    write_manifest(path)
    if damaged:
        (path / "weights.bin").write_bytes(bytes(255 - b for b in range(256)) * 64)
    return path


def _find(rank, world_size, folder):
    import titan_spec.components.checkpoint as checkpoint
    from titan_spec.config.schema import Checkpoint

    hashed = []
    original = checkpoint._sha256
    checkpoint._sha256 = lambda path: hashed.append(path) or original(path)
    try:
        found = checkpoint.find_resume_point(Checkpoint(enable=True), folder)
        outcome = {"path": str(found) if found else None}
    except checkpoint.CheckpointError as err:
        outcome = {"error": str(err), "same": err.same_on_every_rank}
    import torch.distributed as dist

    gathered = [None] * world_size
    dist.all_gather_object(gathered, {**outcome, "hashed": len(hashed)})
    return gathered


def test_rank_zero_hashes_and_every_rank_takes_its_answer(tmp_path):
    _step(tmp_path, 10)
    _step(tmp_path, 20, damaged=True)
    ranks = run_function(2, _find, tmp_path, tmp_path)
    assert [r["path"] for r in ranks] == [str(tmp_path / "step-10")] * 2
    assert ranks[0]["hashed"] > 0 and ranks[1]["hashed"] == 0


def test_every_checkpoint_damaged_is_refused_on_every_rank(tmp_path):
    _step(tmp_path, 10, damaged=True)
    ranks = run_function(2, _find, tmp_path, tmp_path)
    assert ranks[0]["error"] == ranks[1]["error"] and "every checkpoint" in ranks[0]["error"]
    assert ranks[1]["same"] and ranks[1]["hashed"] == 0
