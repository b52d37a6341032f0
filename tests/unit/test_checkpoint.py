"""Single-process checkpoint behaviour: exact resume, atomicity, damage detection."""

import os
import shutil

import pytest
import torch

from tests.helpers import run_trainer
from titan_spec.components.checkpoint import CheckpointError, list_checkpoints, verify

STEPS = ["--sft.steps=8", "--lr_scheduler.warmup_steps=2"]


def _run(folder, *extra, stop_at=None):
    return run_trainer("debug_model.toml", STEPS + [f"--job.dump_folder={folder}", *extra],
                       stop_at=stop_at)


def test_stop_and_resume_equals_straight_run(tmp_path):
    straight = _run(tmp_path / "straight", "--checkpoint.enable=false")
    first = _run(tmp_path / "resumed", "--checkpoint.interval=4", stop_at=4)
    second = _run(tmp_path / "resumed", "--checkpoint.interval=100")
    assert second["steps"] == [5, 6, 7, 8]
    assert first["losses"] + second["losses"] == straight["losses"]
    for name, tensor in straight["weights"].items():
        assert torch.equal(second["weights"][name], tensor), name


def test_half_written_checkpoint_is_never_latest(tmp_path):
    _run(tmp_path, "--sft.steps=2", "--checkpoint.interval=2")
    folder = tmp_path / "checkpoint"
    shutil.copytree(folder / "step-2", folder / "step-9.tmp")  # a crash mid-save
    assert [s for s, _ in list_checkpoints(folder)] == [2]


def _truncate_biggest(step_folder):
    biggest = max((p for p in step_folder.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    return biggest


def test_truncated_checkpoint_detected_and_not_loaded(tmp_path):
    _run(tmp_path, "--sft.steps=4", "--checkpoint.interval=2")
    folder = tmp_path / "checkpoint"
    damaged = _truncate_biggest(folder / "step-4")
    with pytest.raises(CheckpointError, match=f"{damaged.name} has .* bytes"):
        verify(folder / "step-4")
    # Explicit load of the damaged one: refused with the reason.
    with pytest.raises(CheckpointError, match="truncated"):
        _run(tmp_path, f"--checkpoint.load_path={folder / 'step-4'}")
    # Automatic resume skips it and takes the newest intact one.
    resumed = _run(tmp_path, "--sft.steps=5")
    assert resumed["steps"] == [3, 4, 5]


def test_flipped_byte_detected(tmp_path):
    _run(tmp_path, "--sft.steps=2", "--checkpoint.interval=2")
    step = tmp_path / "checkpoint" / "step-2"
    target = max(step.rglob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        verify(step)


def test_keep_latest_k(tmp_path):
    _run(tmp_path, "--sft.steps=6", "--checkpoint.interval=1", "--checkpoint.keep_latest_k=2")
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoint")] == [5, 6]


def test_mismatched_model_is_a_clear_error(tmp_path):
    _run(tmp_path, "--sft.steps=2", "--checkpoint.interval=2")
    with pytest.raises(CheckpointError, match="model.name/flavor"):
        _run(tmp_path, "--model.flavor=debug_moe", "--sft.steps=3")
    assert os.path.isdir(tmp_path / "checkpoint" / "step-2")  # nothing lost


def test_damaged_manifest_is_skipped_like_any_damage(tmp_path):
    _run(tmp_path, "--sft.steps=4", "--checkpoint.interval=2")
    manifest = tmp_path / "checkpoint" / "step-4" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # torn mid-write
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        verify(manifest.parent)
    assert _run(tmp_path, "--sft.steps=5")["steps"] == [3, 4, 5]


def test_every_checkpoint_damaged_refuses_to_start_over(tmp_path):
    _run(tmp_path, "--sft.steps=4", "--checkpoint.interval=2")
    for step in (2, 4):
        (tmp_path / "checkpoint" / f"step-{step}" / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"every checkpoint .* damaged \(step-2, step-4\)"
                                              r".*--checkpoint.resume=false"):
        _run(tmp_path, "--sft.steps=5")
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoint")] == [2, 4]  # kept
    assert _run(tmp_path, "--sft.steps=1", "--checkpoint.resume=false")["steps"] == [1]


def test_full_disk_save_keeps_the_newest_checkpoint_and_no_partial_folder(small_filesystem):
    folder = small_filesystem / "run"
    with pytest.raises(CheckpointError) as failed:
        _run(folder, "--sft.steps=6", "--checkpoint.interval=2", "--checkpoint.keep_latest_k=0")
    message = str(failed.value)
    assert "could not save checkpoint step-4" in message and "step-2, is kept" in message
    assert "No space left on device" in message or "MiB were free" in message
    assert "\n" not in message
    names = sorted(p.name for p in (folder / "checkpoint").iterdir())
    assert names == ["step-2"]  # no step-4.tmp left to keep the disk full
    verify(folder / "checkpoint" / "step-2")
