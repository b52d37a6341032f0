"""Where the job is, and how a rank ends when it fails.

`phase()` names what the job is doing ("sft step 12", "rl step 3", "start-up"), so an error
says where it happened. `report_failure` prints one line per failing rank, never waits in a
collective (a failed rank that does hangs its peers and hides its own error until a timeout)
and leaves the exit to the caller, who ends the process without interpreter teardown.

<dump_folder>/status.json says how the last run ended (running, done, preempted, failed) for
the launcher and for scripts (a Slurm job that requeues itself after a preemption)."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

STATUS_FILE = "status.json"
_where = {"phase": "start-up", "dump_folder": None, "rank": 0}


def set_phase(phase: str, step: int | None = None) -> None:
    _where["phase"] = phase if step is None else f"{phase} step {step}"
    # A fault drill: TITAN_SPEC_FAULT="RANK:PHASE" (e.g. "1:rl step 2") raises there, as a
    # bug would, to rehearse how a job ends when one rank fails.
    drill = os.environ.get("TITAN_SPEC_FAULT")
    if drill and drill == f"{_where['rank']}:{_where['phase']}":
        raise RuntimeError(f"fault injected by TITAN_SPEC_FAULT={drill}")


def phase() -> str:
    return _where["phase"]


def set_rank(rank: int, dump_folder: str | None) -> None:
    _where["rank"], _where["dump_folder"] = rank, dump_folder


def write_status(state: str, **fields) -> None:
    """Atomically replace <dump_folder>/status.json (best effort: a failure to write it must
    not mask the error being reported)."""
    folder = _where["dump_folder"]
    if folder is None:
        return
    record = {"state": state, "phase": phase(), "rank": _where["rank"], "time": time.time(),
              "run_id": os.environ.get("TITAN_SPEC_RUN_ID"), **fields}
    path = Path(folder) / STATUS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def read_status(dump_folder: str) -> dict | None:
    try:
        return json.loads((Path(dump_folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "connection refused", "Socket Timeout", "NCCL communicator was aborted")


def is_peer_loss(err: BaseException) -> bool:
    """An error that only says another rank went away (its own error is reported there)."""
    import torch.distributed as dist

    if isinstance(err, (dist.DistNetworkError, getattr(dist, "DistBackendError", ()))):
        return True
    return isinstance(err, RuntimeError) and any(s.lower() in str(err).lower()
                                                 for s in _PEER_LOSS)


def _lines(err: BaseException) -> list[str]:
    return [line.strip() for line in str(err).splitlines() if line.strip()]


def first_line(err: BaseException, limit: int = 120) -> str:
    """An error's first line, cut to `limit` characters (gloo's messages run long)."""
    lines = _lines(err)
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def last_line(err: BaseException) -> str:
    """An error's last line: its cause, where DCP wraps each rank's traceback in the text."""
    lines = _lines(err)
    return lines[-1] if lines else repr(err)


def report_failure(err: BaseException, rank: int) -> None:
    """One line on stderr: a user's error (ValueError) as it is; a bug with its traceback in
    <dump_folder>/errors/rank<R>.txt (printed in full when that cannot be written); a peer's
    disappearance as a short note, since that peer reports the cause."""
    where = f"rank {rank} in {phase()}"
    if is_peer_loss(err):
        from .stop_signal import received

        if received():  # the job is being stopped: peers leaving is what was asked for
            return
        print(f"titan-spec: {where}: stopped, a peer rank went away ({first_line(err)}); "
              "the failing rank reports the cause.", file=sys.stderr, flush=True)
        return
    if isinstance(err, KeyboardInterrupt):
        print(f"titan-spec: {where}: interrupted.", file=sys.stderr, flush=True)
        return
    if getattr(err, "same_on_every_rank", False) and rank != 0:
        return  # a collective's error, raised alike on every rank: rank 0 reports it
    message = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
    write_status("failed", error=message)
    if isinstance(err, ValueError):
        print(f"titan-spec: error on {where}: {message}", file=sys.stderr, flush=True)
        return
    text = "".join(traceback.format_exception(err))
    folder = _where["dump_folder"]
    try:
        path = Path(folder or ".") / "errors" / f"rank{rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        hint = f" (traceback in {path})"
    except OSError:
        print(text, file=sys.stderr)
        hint = ""
    print(f"titan-spec: error on {where}: {message}{hint}", file=sys.stderr, flush=True)
