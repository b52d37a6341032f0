"""A resumed run's metrics.jsonl holds each (phase, step) once: the rows of the steps after the
checkpoint move to a backup file (nothing is lost), a torn last line is dropped."""

import json

from titan_spec.components.metrics import MetricsLogger, read_records
from titan_spec.config.schema import Metrics

ROWS = [{"phase": "sft", "step": 1}, {"phase": "sft", "step": 2}, {"phase": "eval", "step": 2},
        {"phase": "rl", "step": 3}, {"phase": "rl", "step": 4}, {"phase": "eval", "step": 4}]


def _write(folder, rows, torn=""):
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def _logger(folder, resumed_at):
    cfg = Metrics(enable_tensorboard=False)
    return MetricsLogger(str(folder), cfg, "test", is_main=True, resumed_at=resumed_at)


def test_resume_moves_the_rows_after_the_checkpoint_to_a_backup(tmp_path):
    _write(tmp_path, ROWS, torn='{"phase": "rl", "st')
    logger = _logger(tmp_path, resumed_at=3)
    kept = [(r["phase"], r["step"]) for r in read_records(tmp_path / "metrics.jsonl")]
    assert kept == [("sft", 1), ("sft", 2), ("eval", 2), ("rl", 3)]
    backups = list(tmp_path.glob("metrics.jsonl.after-step-3.*.bak"))
    assert len(backups) == 1
    assert [json.loads(line) for line in backups[0].read_text().splitlines()] == ROWS[4:]
    logger.log({"phase": "rl", "step": 4, "loss": 0.5})
    steps = [(r["phase"], r["step"]) for r in logger.records()]
    assert len(steps) == len(set(steps)) == 5


def test_resume_with_nothing_after_the_checkpoint_rewrites_nothing(tmp_path):
    _write(tmp_path, ROWS)
    _logger(tmp_path, resumed_at=5)
    assert read_records(tmp_path / "metrics.jsonl") == ROWS
    assert not list(tmp_path.glob("*.bak"))


def test_fresh_run_in_a_used_folder_keeps_the_old_file(tmp_path):
    _write(tmp_path, ROWS)
    _logger(tmp_path, resumed_at=None)
    assert not (tmp_path / "metrics.jsonl").exists()
    (backup,) = tmp_path.glob("metrics.jsonl.*.bak")
    assert read_records(backup) == ROWS
