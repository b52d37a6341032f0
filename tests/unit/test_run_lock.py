"""One job per dump folder: a live holder in another process is refused by name, and the lock
of a job killed with SIGKILL is free at once (the kernel drops an flock with its holder)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from titan_spec.components.run_lock import FolderBusy, RunLock, check_free

HOLD = ("import sys, time; from titan_spec.components.run_lock import RunLock; "
        "RunLock(sys.argv[1], 'holder-job').acquire(); print('held', flush=True); "
        "time.sleep(600)")


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_holder_is_refused_by_name_and_a_killed_one_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=rf"job 'holder-job' \(pid {proc.pid} on host"):
            RunLock(tmp_path, "second").acquire()
        with pytest.raises(FolderBusy, match="another job.dump_folder"):
            check_free(tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    check_free(tmp_path)  # stale: its holder is dead
    lock = RunLock(tmp_path, "third").acquire()
    assert '"job": "third"' in (tmp_path / ".run.lock").read_text()
    lock.release()


def test_released_lock_is_free_and_a_missing_folder_is_free(tmp_path):
    RunLock(tmp_path / "a").acquire().release()
    RunLock(tmp_path / "a").acquire().release()
    check_free(tmp_path / "never-made")
    assert not (tmp_path / "never-made").exists()




def test_a_checking_launcher_on_another_node_is_not_taken_for_a_job(tmp_path):
    """The launchers of a multi-node job check the shared folder at the same moment, and a
    check holds the lock for an instant. Found on a real 2-node Slurm job: the second node's
    check met the first one's and refused with 'in use by job ?'. A lock held for a moment
    is asked again; one held past the patience is a job; a probe leaves the file's holder
    name as it was."""
    RunLock(tmp_path, "earlier-job").acquire().release()
    probe = RunLock(tmp_path).acquire(record=False)
    threading.Timer(0.3, probe.release).start()
    start = time.monotonic()
    check_free(tmp_path, patience_s=5.0)
    assert 0.3 <= time.monotonic() - start < 5.0
    held = RunLock(tmp_path).acquire(record=False)
    try:
        with pytest.raises(FolderBusy, match="in use"):
            check_free(tmp_path, patience_s=0.3)
    finally:
        held.release()
    assert '"job": "earlier-job"' in (tmp_path / ".run.lock").read_text()
