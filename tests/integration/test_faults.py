"""Faults injected for real into `run_train.sh` jobs of 2 gloo ranks: SIGTERM and SIGUSR1 of the
launcher (preemption), kill -9 of the launcher, a second job on the same dump folder, an
exception on one rank. Each time the job ends as promised, and the reruns finish with what an
uninterrupted run gives."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    compare_records,
    launcher_env,
    read_metrics,
    read_metrics_so_far,
    stable_metrics,
)
from titan_spec.components.checkpoint import verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
JOB = ["--config", "debug_model.toml", "--sft.steps=30", "--sft.eval_problems=0",
       "--rl.steps=30", "--rl.prompts_per_step=4", "--rl.group_size=2", "--rl.eval_problems=4",
       "--rollout.max_new_tokens=12", "--rollout.max_batch_size=4", "--drafter.distill_steps=2",
       "--training.seq_len=64", "--task.arithmetic.max_digits=1",
       "--metrics.enable_tensorboard=false", "--checkpoint.interval=33"]
SUMMARY_ROWS = ("RL steps", "reward (first 5", "greedy held-out accuracy")


def _env():
    return launcher_env(NPROC="2")


def _start(folder: Path, *extra: str, job: tuple = tuple(JOB)) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "run_train.sh"), *job, f"--job.dump_folder={folder}",
                             *extra], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _wait_for_rl_step(folder: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, _finish(proc)[1][-3000:]
        if any(r.get("phase") == "rl" and r["step"] >= step
               for r in read_metrics_so_far(folder)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no rl step {step} within 240 s")


def _summary(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(SUMMARY_ROWS)]


def _workers_of(folder: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and f"--job.dump_folder={folder}" in cmdline \
                and "titan_spec.train" in cmdline:
            pids.append(int(proc.name))
    return pids


def _check_same_run(straight: dict, folder: Path, output: str) -> None:
    records = read_metrics(folder)
    keys = [(r["phase"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    rl = [r for r in records if r["phase"] == "rl"]
    errors = compare_records(stable_metrics(straight["rl"]), stable_metrics(rl))
    assert not errors, "\n".join(errors)
    assert _summary(output) == straight["summary"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    code, output = _finish(_start(folder))
    assert code == 0, output[-3000:]
    assert len(_summary(output)) == 3, output[-3000:]
    return {"rl": [r for r in read_metrics(folder) if r["phase"] == "rl"],
            "summary": _summary(output)}


def _preempt(folder: Path, sig: signal.Signals, at_step: int, twice: bool = False) -> int:
    """Start (or resume) the job, send `sig` to the launcher once rl step `at_step` is logged
    (`twice`: again while the ranks finish the step and save); -> the step it stopped after."""
    proc = _start(folder)
    _wait_for_rl_step(folder, proc, at_step)
    sent = time.monotonic()
    proc.send_signal(sig)
    if twice:
        time.sleep(0.3)
        proc.send_signal(sig)
    code, output = _finish(proc)
    assert time.monotonic() - sent < 60  # one step and a save, not a timeout
    assert code == 75, output[-3000:]
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "preempted" and status["signal"] == sig.name
    stopped = status["step"]
    assert stopped >= at_step
    assert f"preempted ({sig.name}) after step {stopped}" in output
    assert output.count("rerun the same command to resume") == 1 and "Traceback" not in output
    assert "peer rank went away" not in output  # the others leave quietly
    verify(folder / "checkpoint" / f"step-{stopped}")
    return stopped


def test_preempted_twice_then_resumed_equals_the_straight_run(straight, tmp_path):
    folder = tmp_path / "job"
    first = _preempt(folder, signal.SIGTERM, at_step=31, twice=True)
    _preempt(folder, signal.SIGUSR1, at_step=first + 2)
    code, output = _finish(_start(folder))
    assert code == 0, output[-3000:]
    _check_same_run(straight, folder, output)


def test_kill_9_of_the_launcher_ends_the_workers_and_a_rerun_equals_the_straight_run(
        straight, tmp_path):
    folder = tmp_path / "job"
    proc = _start(folder)
    _wait_for_rl_step(folder, proc, 36)  # past step 33's checkpoint: rows to repeat
    assert len(_workers_of(folder)) == 2
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 10
    while _workers_of(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _workers_of(folder), "workers outlived their launcher"
    code, output = _finish(_start(folder))  # the kernel dropped the dead job's lock
    assert code == 0, output[-3000:]
    _check_same_run(straight, folder, output)


def test_an_exception_on_one_rank_ends_the_job_with_one_message(tmp_path):
    """A fault drill raises on rank 1 at the start of rl step 32, as a bug would."""
    start = time.monotonic()
    proc = subprocess.Popen([str(ROOT / "run_train.sh"), *JOB, f"--job.dump_folder={tmp_path}",
                             "--comm.timeout_s=60"],
                            env=dict(_env(), TITAN_SPEC_FAULT="1:rl step 32"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, output = _finish(proc)
    assert code == 1, output[-3000:]
    assert time.monotonic() - start < 60 + 30
    assert output.count("fault injected by TITAN_SPEC_FAULT") == 1, output[-3000:]
    assert "error on rank 1 in rl step 32: RuntimeError" in output
    assert "Traceback" not in output and "ChildFailedError" not in output
    assert "RuntimeError: fault injected" in (tmp_path / "errors" / "rank1.txt").read_text()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["rank"] == 1


def test_a_prompt_one_rank_would_fail_on_is_refused_before_workers_start(tmp_path):
    """The finding behind the test above: a prompt only rank 1 draws (rl step 1) has a
    character the tokenizer lacks. The launcher's preflight now encodes every prompt."""
    import random

    from titan_spec.rl.tasks.jsonl import JsonlTask

    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "solution": str(2 * i)}
            for i in range(20)]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = JsonlTask(str(good), heldout_fraction=0.0)
    rng = random.Random("rl:0:1")  # RLData's draw of step 1 with job.seed 0
    drawn = [task.problems.index(task.sample(rng)) for _ in range(4)]
    for index in set(drawn[2:]) - set(drawn[:2]):  # rank 1's half of the step
        rows[index]["prompt"] += "é"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = _finish(_start(tmp_path / "job", "--task.name=jsonl",
                                  f"--task.jsonl.path={bad}", "--sft.steps=0",
                                  "--task.jsonl.heldout_fraction=0",
                                  "--rl.eval_problems=0", "--drafter.kind=ngram",
                                  job=tuple(a for a in JOB if "arithmetic" not in a)))
    assert code == 2, output[-3000:]
    assert output.count("character 'é' is not in") == 1 and "Traceback" not in output
    assert not (tmp_path / "job").exists()  # no worker started


def test_a_second_job_on_a_used_dump_folder_is_refused_by_name(tmp_path):
    folder = tmp_path / "job"
    first = _start(folder, "--sft.steps=3", "--rl.steps=500")
    _wait_for_rl_step(folder, first, 4)
    second = subprocess.run([str(ROOT / "run_train.sh"), *JOB, f"--job.dump_folder={folder}"],
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"job.dump_folder {folder} is in use by job 'debug_model' (pid" in second.stderr
    assert not _workers_of(folder) or first.poll() is None  # the first job runs on
    first.send_signal(signal.SIGTERM)
    assert _finish(first)[0] == 75
    keys = [(r["phase"], r["step"]) for r in read_metrics(folder)]
    assert len(keys) == len(set(keys))  # nothing of the refused job in its metrics


def test_async_job_is_preempted_and_resumed(tmp_path):
    """1 learner + 1 rollout rank: the learner saves and exits 75, the rollout rank leaves
    quietly; the rerun finishes with each RL step once."""
    job = ("--config", "debug_model.toml", "--sft.steps=2", "--sft.eval_problems=0",
           "--rl.steps=30", "--rl.prompts_per_step=4", "--rl.group_size=2",
           "--rl.eval_problems=0", "--rollout.max_new_tokens=12", "--rollout.max_batch_size=4",
           "--drafter.distill_steps=2", "--training.seq_len=64",
           "--task.arithmetic.max_digits=2", "--metrics.enable_tensorboard=false",
           "--async_rl.rollout_ranks=1", "--checkpoint.interval=100")
    proc = _start(tmp_path, job=job)
    _wait_for_rl_step(tmp_path, proc, 4)
    proc.send_signal(signal.SIGUSR1)
    code, output = _finish(proc)
    assert code == 75, output[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "preempted" and status["signal"] == "SIGUSR1"
    verify(tmp_path / "checkpoint" / f"step-{status['step']}")
    assert "peer rank went away" not in output and "Traceback" not in output
    code, output = _finish(_start(tmp_path, job=job))
    assert code == 0, output[-3000:]
    steps = [r["step"] for r in read_metrics(tmp_path) if r["phase"] == "rl"]
    assert steps == list(range(3, 33))
