"""A full disk (a real 16 MiB tmpfs) under the HF export of a run and under the conversion
tool: one line naming the folder, the free space and the cause; no partial folder left; what
was there before is kept."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_trainer
from titan_spec.components.checkpoint import verify
from titan_spec.formats.hf_export import ExportError

ROOT = Path(__file__).resolve().parents[2]


def test_failed_hf_export_leaves_the_checkpoint_and_no_partial_folder(small_filesystem):
    folder = small_filesystem / "run"
    with pytest.raises(ExportError) as failed:
        run_trainer("debug_model.toml", ["--sft.steps=2", "--checkpoint.interval=2",
                                         "--checkpoint.last_save_in_hf=true",
                                         f"--job.dump_folder={folder}"])
    message = str(failed.value)
    assert f"could not write {folder / 'checkpoint' / 'step-2-hf'}" in message
    assert "MiB were free" in message and "\n" not in message
    # The policy's folder may be complete (it is renamed into place only then); the drafter's
    # did not fit. No hidden partial folder is left either way.
    left = sorted(p.name for p in (folder / "checkpoint").iterdir())
    assert "step-2" in left and not [name for name in left if name.startswith(".")], left
    verify(folder / "checkpoint" / "step-2")


def test_failed_conversion_exits_2_with_one_line(small_filesystem, tmp_path):
    run_trainer("debug_model.toml", ["--sft.steps=2", "--checkpoint.interval=2",
                                     f"--job.dump_folder={tmp_path / 'run'}"])
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (14 << 20))  # 2 MiB left: the 3 MiB model does not fit
    for fmt in ("hf", "dcp"):
        dst = small_filesystem / f"out-{fmt}"
        done = subprocess.run([sys.executable, "-m", "tools.convert_checkpoint",
                               str(tmp_path / "run" / "checkpoint" / "step-2"), str(dst),
                               "--to", fmt], cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(lines) == 1 and dst.name in lines[0], done.stderr[-2000:]
        assert sorted(p.name for p in small_filesystem.iterdir()) == ["filler"]
