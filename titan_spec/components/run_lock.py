"""One job per dump folder: rank 0 holds an exclusive lock on <dump_folder>/.run.lock for the
whole run, before anything in the folder is read or written.

The lock is an flock(2) on the file, so the kernel drops it when its holder dies however it
dies (kill -9 included): a stale lock needs no clean-up and is simply taken by the next job.
The file's text names the holder (host, pid, start time, job name) for the refusal message;
it is advice for people, never what decides who holds the lock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".run.lock"


class FolderBusy(ValueError):
    """Another live job holds this dump folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (its lock file names none)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"job '{info.get('job', '?')}' (pid {info.get('pid', '?')} on host "
            f"{info.get('host', '?')}, started {started})")


class RunLock:
    def __init__(self, dump_folder: str | os.PathLike, job_name: str = ""):
        self.path = Path(dump_folder) / LOCK_NAME
        self.job_name = job_name
        self._fd: int | None = None

    def acquire(self, record: bool = True) -> "RunLock":
        """Take the lock or raise FolderBusy naming the holder and the way out; `record`:
        name this process in the file (a probe that lets go at once does not)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(
                f"job.dump_folder {self.path.parent} is in use by {_holder(self.path)}. Wait "
                "for that job to end or stop it, or give this run another job.dump_folder."
            ) from None
        self._fd = fd
        if record:
            info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                    "job": self.job_name}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def check_free(dump_folder: str | os.PathLike, patience_s: float = 2.0) -> None:
    """The launcher's check before it starts workers: FolderBusy when a live job holds the
    folder; a folder that does not exist is free. It takes the lock for an instant, and so do
    the launchers of a multi-node job's other nodes, which check the same shared folder at the
    same moment: a busy folder is asked again for `patience_s` before it counts as taken."""
    if not (Path(dump_folder) / LOCK_NAME).exists():
        return
    deadline = time.monotonic() + patience_s
    while True:
        try:
            RunLock(dump_folder).acquire(record=False).release()
            return
        except FolderBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
