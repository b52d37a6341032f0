"""Per-step metrics: one JSON object per line in <dump_folder>/metrics.jsonl (rank 0), optional
TensorBoard scalars, and a console progress line."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("titan_spec")


class StepTimer:
    """Named, non-overlapping spans of one step, reported as `time_<name>_s`, and the step's
    wall time as `step_time_s`. Every declared span is reported (0.0 when it did not run), so
    all records of a driver have the same keys."""

    def __init__(self, *declared: str):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(declared, 0.0)

    @contextmanager
    def span(self, name: str):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

    def add(self, name: str, seconds: float) -> None:
        """A span measured elsewhere (e.g. inside a component that reports its own time)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def record(self) -> dict:
        spans = {f"time_{name}_s": value for name, value in self.seconds.items()}
        return dict(spans, step_time_s=time.perf_counter() - self.start)


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # Peak resident set of this process (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def resident_gib() -> float:
    """This process's resident set now (Linux /proc; the peak where that is missing): what a
    leak makes grow step after step, which a peak set at start-up hides."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def memory_record(device: torch.device) -> dict:
    """A step record's memory figures: the peak (device, or host on CPU) and the host's
    resident set now."""
    return {"memory_gib": memory_gib(device), "rss_memory_gib": resident_gib()}


_CONSOLE = (("loss", "loss {:.4f}"), ("reward_mean", "reward {:.3f}"),
            ("accuracy", "accuracy {:.3f}"), ("acceptance_length", "accept_len {:.2f}"),
            ("response_len_mean", "len {:.1f}"), ("rollout_tokens_per_s", "rollout {:.0f} tok/s"),
            ("logprob_mismatch_max", "mismatch {:.1e}"), ("drafter_loss", "drafter_loss {:.3f}"),
            ("grad_norm", "grad_norm {:.3f}"), ("lr", "lr {:.2e}"),
            ("tokens_per_s", "{:.0f} tok/s"), ("step_time_s", "{:.2f}s"),
            ("memory_gib", "{:.2f} GiB"))


def console_line(record: dict) -> str:
    parts = [f"{record['phase']} step {record['step']:4d}"]
    parts += [fmt.format(record[key]) for key, fmt in _CONSOLE if key in record]
    return "  ".join(parts)


def _kept_on_resume(record: dict, step: int) -> bool:
    """A row the resumed run will not write again: before the checkpoint's step, or that
    step's own training record (logged before its save). Evaluations and phase records at
    that step come after the save, and the resumed run writes them anew."""
    return record["step"] < step or (record["step"] == step and record["phase"] in ("sft", "rl"))


def read_records(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (the run was killed mid-write) is left
    out."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class MetricsLogger:
    def __init__(self, dump_folder: str, cfg, run_name: str, is_main: bool,
                 resumed_at: int | None):
        """resumed_at: the step of the checkpoint this run resumed from (None: a fresh run)."""
        self.is_main, self.cfg = is_main, cfg
        self.path = Path(dump_folder) / "metrics.jsonl"
        self._tb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and resumed_at is None:
            # A fresh run in a used folder: keep the old file, never mix two runs in one.
            backup = self.path.with_suffix(f".jsonl.{int(time.time())}.bak")
            os.replace(self.path, backup)
            log.warning("moved the previous %s to %s", self.path.name, backup.name)
        elif self.path.exists():
            self._drop_rows_after(resumed_at)
        if cfg.enable_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard not installed; metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(str(Path(dump_folder) / "tb" / run_name))

    def _drop_rows_after(self, step: int) -> None:
        """A resume repeats the steps after its checkpoint: their old rows move to a backup
        file, so that each (phase, step) appears once."""
        records = read_records(self.path)
        kept = [r for r in records if _kept_on_resume(r, step)]
        if len(kept) == len(records):
            return
        dropped = [r for r in records if not _kept_on_resume(r, step)]
        backup = self.path.with_suffix(f".jsonl.after-step-{step}.{int(time.time())}.bak")
        backup.write_text("".join(json.dumps(r) + "\n" for r in dropped))
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        log.warning("resuming at step %d: moved %d rows of the steps after it to %s", step,
                    len(dropped), backup.name)

    def records(self) -> list[dict]:
        """Every row so far (rank 0; an empty list elsewhere)."""
        return read_records(self.path) if self.is_main and self.path.exists() else []

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self._tb.add_scalar(f"{record.get('phase', 'train')}/{key}", value,
                                        record["step"])
        if record["phase"] == "eval" or record["step"] % self.cfg.log_freq == 0:
            log.info("%s", console_line(record))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
