"""Shared test helpers: run the real job (titan_spec.job) in-process or in N spawned gloo ranks."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from titan_spec.runtime import close_distributed, exit_now

# Small, fast settings shared by parity and checkpoint tests (SFT only, no evals).
FAST = [
    "--training.global_batch_size=8",
    "--training.seq_len=64",
    "--task.arithmetic.max_digits=2",
    "--metrics.enable_tensorboard=false",
    "--lr_scheduler.warmup_steps=2",
    "--sft.eval_problems=0",
    "--rl.steps=0",
]

# The RL job shortened: 3 SFT steps, 2 GRPO steps of 4 prompts x 2 samples.
RL_FAST = [
    "--sft.steps=3", "--sft.eval_problems=0", "--rl.steps=2", "--rl.prompts_per_step=4",
    "--rl.group_size=2", "--rl.eval_problems=4", "--rollout.max_new_tokens=12",
    "--rollout.max_batch_size=4", "--drafter.distill_steps=2", "--training.seq_len=64",
    "--task.arithmetic.max_digits=2", "--metrics.enable_tensorboard=false",
    "--checkpoint.interval=1000",
]


class _Stopped(Exception):
    """Raised after the checkpoint of step `stop_at`, as a crash would end the run there."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_after_save(job, stop_at: int) -> None:
    save = job.maybe_save

    def maybe_save_then_stop(last_step):
        save(last_step)
        if job.state.step == stop_at:
            raise _Stopped
    job.maybe_save = maybe_save_then_stop


def run_trainer(config: str, overrides: list[str], out_file: str | None = None,
                stop_at: int | None = None) -> dict:
    """Run the job's SFT phase in this process (its real loop, save path and metrics); return
    this run's {'losses', 'grad_norms', 'steps'} from metrics.jsonl and the full 'weights'.
    `stop_at` ends the run right after that step's checkpoint, as a crash would."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from titan_spec.config import load_config
    from titan_spec.job import build_rank

    cfg = load_config(config, FAST + list(overrides))
    env, job = build_rank(cfg)
    first = job.state.step
    if stop_at is not None:
        _stop_after_save(job, stop_at)
    try:
        job.run()
    except _Stopped:
        pass
    finally:
        job.close()
    weights = get_model_state_dict(
        job.learner.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    close_distributed()
    result = {"weights": {k: v.clone() for k, v in weights.items()}}
    if env.is_main:
        records = [r for r in read_metrics(cfg.job.dump_folder)
                   if r["phase"] == "sft" and r["step"] > first]
        records = records[-(job.state.step - first):] if job.state.step > first else []
        result.update(losses=[r["loss"] for r in records],
                      grad_norms=[r["grad_norm"] for r in records],
                      steps=[r["step"] for r in records])
        if out_file is not None:
            torch.save(result, out_file)
    return result


def _env(rank: int, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _worker(rank, world_size, port, config, overrides, out_file, stop_at):
    _env(rank, world_size, port)
    run_trainer(config, overrides, out_file, stop_at)
    exit_now(0)


def run_distributed(world_size: int, config: str, overrides: list[str], tmp_path: Path,
                    stop_at: int | None = None) -> dict:
    """run_trainer on `world_size` spawned gloo ranks; return rank 0's result."""
    out_file = str(tmp_path / f"result-{free_port()}.pt")
    mp.start_processes(_worker, args=(world_size, free_port(), config, list(overrides), out_file,
                                          stop_at),
                       nprocs=world_size, join=True, start_method="spawn")
    return torch.load(out_file, weights_only=True)


def launcher_env(**extra) -> dict:
    """The environment for running run_train.sh from a test: this venv's python, and none of
    a surrounding torchrun's variables (the script would take itself for a worker)."""
    env = dict(os.environ, PYTHON=sys.executable, **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def read_metrics(folder) -> list[dict]:
    return [json.loads(line) for line in Path(folder, "metrics.jsonl").read_text().splitlines()]


def read_metrics_so_far(folder) -> list[dict]:
    """metrics.jsonl of a run still writing it: the complete lines (none if not there yet)."""
    path = Path(folder, "metrics.jsonl")
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def _function_worker(rank, world_size, port, fn, args, out_file):
    _env(rank, world_size, port)
    import torch.distributed as dist

    from titan_spec import comm

    dist.init_process_group("gloo")
    comm.configure(torch.device("cpu"))  # as setup_distributed: the control plane's group
    result = fn(rank, world_size, *args)
    if rank == 0:
        torch.save(result, out_file)
    close_distributed()  # a no-op when fn closed it (a whole job does)
    exit_now(0)


def build_learner(flavor: str, parallelism: dict, world_size: int, seed: int = 3):
    """A parallelized Qwen3 learner (inside a run_function rank) -> (model, dims, spec)."""
    from titan_spec.config.schema import Parallelism
    from titan_spec.models import build_model, get_model_spec
    from titan_spec.models.init import materialize_and_init
    from titan_spec.parallel.parallel_dims import ParallelDims
    from titan_spec.parallel.plans import parallelize

    cfg = Parallelism(**parallelism)
    dims = ParallelDims.from_config(cfg, world_size)
    dims.build_meshes("cpu")
    model = build_model("qwen3", flavor, device="meta")
    spec = get_model_spec("qwen3")
    parallelize("qwen3", model, dims, cfg, "cpu")
    materialize_and_init(model, torch.device("cpu"), seed=seed)
    return model, dims, spec


def run_function(world_size: int, fn, tmp_path: Path, *args):
    """Run fn(rank, world_size, *args) on `world_size` spawned gloo ranks (fn must be a
    module-level function); return rank 0's result."""
    out_file = str(tmp_path / f"fn-{free_port()}.pt")
    mp.start_processes(_function_worker, args=(world_size, free_port(), fn, args, out_file),
                       nprocs=world_size, join=True, start_method="spawn")
    return torch.load(out_file, weights_only=False)


def train_job(config: str, overrides: list[str]) -> None:
    """The whole job (SFT, drafter warm-up, RL) on this rank, as run_train.sh would run it."""
    from titan_spec.config import load_config
    from titan_spec.job import build_rank

    _, role = build_rank(load_config(config, list(overrides)))
    try:
        role.run()
    finally:
        role.close()
        close_distributed()


# Keys whose values depend on the machine's speed or load, never compared to a golden run.
_VOLATILE_SUFFIXES = ("_s", "_per_s", "memory_gib")
_VOLATILE_KEYS = {"queue_depth", "rollout_speedup_vs_plain"}
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def stable_metrics(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without timings (what a refactor must keep bit for bit)."""
    return [{k: v for k, v in r.items()
             if k not in _VOLATILE_KEYS and not k.endswith(_VOLATILE_SUFFIXES)} for r in records]


def _close(expected, actual, path: str, rel: float, errors: list, abs_tol: float = 0.0) -> None:
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _close(e, a, f"{path}[{i}]", rel, errors, abs_tol)
    elif isinstance(expected, float) and isinstance(actual, (int, float)) \
            and not isinstance(actual, bool):
        if abs(expected - actual) > rel * max(abs(expected), abs(actual), 1e-6) + abs_tol:
            errors.append(f"{path}: golden {expected!r}, now {actual!r}")
    elif expected != actual:
        errors.append(f"{path}: golden {expected!r}, now {actual!r}")


def compare_records(expected_records: list[dict], records: list[dict], rel: float = 1e-5,
                    abs_tol: float = 0.0):
    """-> the differences between two runs' stable metrics, key by key (floats within `rel`
    plus `abs_tol`, everything else equal; keys only the second run has are allowed: a metric
    added on purpose)."""
    expected_records, records = stable_metrics(expected_records), stable_metrics(records)
    errors = []
    if len(expected_records) != len(records):
        errors.append(f"{len(records)} records, expected {len(expected_records)}: "
                      f"{[(r['phase'], r['step']) for r in records]}")
    for i, (expected, actual) in enumerate(zip(expected_records, records, strict=False)):
        where = f"record {i} ({expected.get('phase')} step {expected.get('step')})"
        missing = sorted(set(expected) - set(actual))
        if missing:
            errors.append(f"{where}: keys gone: {missing}")
        for key in sorted(set(expected) & set(actual)):
            _close(expected[key], actual[key], f"{where} {key}", rel, errors, abs_tol)
    return errors


def check_golden(name: str, records: list[dict], rel: float = 1e-2,
                 abs_tol: float = 1e-5) -> None:
    """Compare a run's stable metrics with tests/golden/<name>.json (compare_records): every
    token count, reward, acceptance figure and version exactly, floats to 1% plus 1e-5.
    The floats cannot be tighter across machines: 40 training steps amplify the last-bit
    differences of one CPU's kernels from another's (tests/conftest.py pins the instruction
    set; that closes the gap for the sync job, not for the MoE job's small expert GEMMs),
    reaching 0.4% on the SFT grad norms and 3e-8 on logprob mismatches of ~1e-7.
    TITAN_SPEC_WRITE_GOLDEN=1 rewrites the file instead: do that only for a change meant to
    alter the numbers, and say so in the commit."""
    path = GOLDEN_DIR / f"{name}.json"
    if os.environ.get("TITAN_SPEC_WRITE_GOLDEN") == "1":
        path.write_text(json.dumps(stable_metrics(records), indent=1) + "\n")
        return
    errors = compare_records(json.loads(path.read_text()), records, rel, abs_tol)
    assert not errors, f"metrics differ from {path}:\n" + "\n".join(errors[:20])


# Call sites that carry host messages: on the control plane in every job.
CONTROL_SITES = {
    "titan_spec.rl.async_rl.queue.send_message", "titan_spec.rl.async_rl.queue.recv_message",
    "titan_spec.rl.async_rl.queue.broadcast_messages",
    "titan_spec.rl.async_rl.schedule.share_start_point",
    "titan_spec.components.stop_signal.agreed", "titan_spec.runtime.close_distributed",
    "titan_spec.parallel.weight_sync.header_ready",
    "titan_spec.components.checkpoint.find_resume_point",
}


def _read_comm_log(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def assert_planes(path, expected_control: set[str], expected_data: set[str] = frozenset()):
    """A job's TITAN_SPEC_COMM_LOG (titan_spec/comm.py): every call on its plane's device;
    the listed control sites seen, and every control site only on the control plane (a host
    message on the data plane would be a CPU tensor handed to NCCL on a GPU machine)."""
    rows = _read_comm_log(path)
    assert rows, "no communication was logged"
    for row in rows:
        allowed = {"cpu"} if row["plane"] == "control" else {row["data_device"]}
        assert set(row["devices"]) <= allowed, row
        if row["caller"] in CONTROL_SITES:
            assert row["plane"] == "control", row
    for plane, expected in (("control", expected_control), ("data", expected_data)):
        seen = {row["caller"] for row in rows if row["plane"] == plane}
        assert expected <= seen, (plane, expected - seen)
