"""Several nodes: two launchers (one per node) joined by c10d rendezvous on loopback, and
tools/slurm/train.sbatch on a real local Slurm cluster of two emulated nodes (tests/slurm_local.py)
— a 2-node x 1-rank run equals a 2-rank single-node run metric for metric, and a job preempted
with `scancel --signal=USR1` saves, requeues itself and finishes as the uninterrupted run does.
Without root or the Slurm packages the Slurm tests skip with the reason; never a fake scheduler."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import (
    compare_records,
    free_port,
    launcher_env,
    read_metrics,
    read_metrics_so_far,
    stable_metrics,
)
from tests.slurm_local import LocalSlurm, unavailable_reason
from titan_spec.components.checkpoint import verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "tools" / "slurm" / "train.sbatch"
JOB = ["--config", "debug_model.toml", "--sft.steps=6", "--sft.eval_problems=0",
       "--rl.steps=6", "--rl.prompts_per_step=4", "--rl.group_size=2", "--rl.eval_problems=0",
       "--rollout.max_new_tokens=12", "--rollout.max_batch_size=4", "--drafter.distill_steps=2",
       "--training.seq_len=64", "--task.arithmetic.max_digits=1",
       "--metrics.enable_tensorboard=false", "--checkpoint.interval=1000"]


def _run(folder: Path, env: dict, timeout: float = 300) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "run_train.sh"), *JOB, f"--job.dump_folder={folder}"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _steps(folder: Path) -> list[dict]:
    """The per-step records (a resumed run's rl_total counts its own steps only)."""
    return [r for r in read_metrics(folder) if r["phase"] != "rl_total"]


def _same_metrics(expected_folder: Path, folder: Path) -> None:
    records = _steps(folder)
    keys = [(r["phase"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    errors = compare_records(stable_metrics(_steps(expected_folder)), stable_metrics(records))
    assert not errors, "\n".join(errors[:20])


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """The reference: the same job as 2 ranks of one launcher."""
    folder = tmp_path_factory.mktemp("one_node")
    proc = _run(folder, launcher_env(NPROC="2"))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return folder


def test_two_launchers_on_loopback_equal_one_node(one_node, tmp_path):
    """What srun does on two nodes, by hand: NNODES=2, one rank each, c10d on 127.0.0.1."""
    folder = tmp_path / "job"
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [_run(folder, launcher_env(NPROC="1", NNODES="2", RDZV_ENDPOINT=endpoint,
                                       RDZV_ID="loopback"))
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    _same_metrics(one_node, folder)


# ---- a real Slurm cluster ----------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Outside pytest's private (0700) folders: munged wants every folder above its socket
    # open to all.
    root = Path(tempfile.mkdtemp(prefix="titan-spec-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root, nodes=2, cpus=1)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)


def _submit(slurm: LocalSlurm, folder: Path, *options: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    env = launcher_env(TITAN_SPEC_HOME=str(ROOT))
    return slurm.submit(SBATCH, [*JOB, f"--job.dump_folder={folder / 'job'}"],
                        [f"--output={folder}/slurm-%j.out", *options], cwd=ROOT, env=env)


def _log(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.glob("slurm-*.out")))


def test_slurm_two_nodes_equal_one_node(slurm, one_node, tmp_path):
    job = _submit(slurm, tmp_path)
    info = slurm.wait(job, 300)
    log = _log(tmp_path)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "2 nodes x 1 ranks, rendezvous 127.0.0.1:" in log
    assert "fits" in log.lower()  # the dry run of the layout ran before the ranks
    _same_metrics(one_node, tmp_path / "job")


def _rl_steps(folder: Path) -> list[int]:
    return [r["step"] for r in read_metrics_so_far(folder) if r.get("phase") == "rl"]


def test_slurm_preemption_saves_requeues_and_resumes(slurm, one_node, tmp_path):
    """scancel --signal=USR1 reaches each node's launcher as Slurm's --signal=USR1@N would;
    the ranks finish the step and save, the script requeues the job, and the second run
    resumes from that checkpoint and ends as the uninterrupted run does."""
    job = _submit(slurm, tmp_path)
    deadline = time.monotonic() + 240
    while not any(step >= 2 for step in _rl_steps(tmp_path / "job")):
        assert slurm.job(job).get("JobState") in ("PENDING", "RUNNING"), _log(tmp_path)[-3000:]
        assert time.monotonic() < deadline, "no rl step 2 within 240 s"
        time.sleep(0.2)
    slurm.run("scancel", "--signal=USR1", str(job))
    deadline = time.monotonic() + 120
    while slurm.job(job).get("Restarts", "0") == "0":
        assert time.monotonic() < deadline, f"not requeued:\n{_log(tmp_path)[-3000:]}"
        time.sleep(0.5)
    info = slurm.wait(job, 300)
    log = _log(tmp_path)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "requeueing job" in log and "(restart 1)" in log
    stopped = int(log.split("preempted (SIGUSR1) after step ")[1].split(":")[0])
    verify(tmp_path / "job" / "checkpoint" / f"step-{stopped}")
    _same_metrics(one_node, tmp_path / "job")
