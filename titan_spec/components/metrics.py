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


class MetricsLogger:
    def __init__(self, dump_folder: str, cfg, run_name: str, is_main: bool, resumed: bool):
        self.is_main, self.cfg = is_main, cfg
        self.path = Path(dump_folder) / "metrics.jsonl"
        self._tb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not resumed:
            # A fresh run in a used folder: keep the old file, never mix two runs in one.
            backup = self.path.with_suffix(f".jsonl.{int(time.time())}.bak")
            os.replace(self.path, backup)
            log.warning("moved the previous %s to %s", self.path.name, backup.name)
        if cfg.enable_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard not installed; metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(str(Path(dump_folder) / "tb" / run_name))

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
