"""Shared test helpers: run the real Trainer in-process or in N spawned gloo ranks."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

# Small, fast settings shared by parity and checkpoint tests.
FAST = [
    "--training.global_batch_size=8",
    "--training.seq_len=64",
    "--task.max_digits=2",
    "--metrics.enable_tensorboard=false",
    "--lr_scheduler.warmup_steps=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(config: str, overrides: list[str], out_file: str | None = None,
                stop_at: int | None = None) -> dict:
    """Train in this process; return {'losses': [...], 'grad_norms': [...], 'weights': {...}}.
    `stop_at` ends the run early after that step's checkpoint, as a crash would."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from titan_spec.config import load_config
    from titan_spec.trainer import Trainer

    trainer = Trainer(load_config(config, FAST + list(overrides)))
    records = []
    try:
        while trainer.step < trainer.cfg.sft.steps:
            trainer.step += 1
            records.append(trainer.train_step(trainer.step))
            ckpt = trainer.cfg.checkpoint
            if ckpt.enable and (trainer.step % ckpt.interval == 0):
                trainer.checkpoint.save(trainer.step, {"data_position": trainer.step})
            if trainer.step == stop_at:
                break
        weights = get_model_state_dict(
            trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    finally:
        rank = trainer.env.rank
        trainer.close()
    result = {"losses": [r["loss"] for r in records],
              "grad_norms": [r["grad_norm"] for r in records],
              "steps": [r["step"] for r in records],
              "weights": {k: v.clone() for k, v in weights.items()}}
    if out_file is not None and rank == 0:
        torch.save(result, out_file)
    return result


def _worker(rank, world_size, port, config, overrides, out_file, stop_at):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run_trainer(config, overrides, out_file, stop_at)
    # The work is done and the process group destroyed; skip interpreter teardown, where a
    # gloo background thread can still be joinable and abort the process ('terminate called
    # without an active exception'), which spawn would report as a failed rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(world_size: int, config: str, overrides: list[str], tmp_path: Path,
                    stop_at: int | None = None) -> dict:
    """Run the Trainer on `world_size` spawned gloo ranks; return rank 0's result."""
    out_file = str(tmp_path / f"result-{free_port()}.pt")
    mp.start_processes(_worker, args=(world_size, free_port(), config, list(overrides), out_file,
                                          stop_at),
                       nprocs=world_size, join=True, start_method="spawn")
    return torch.load(out_file, weights_only=True)


def read_metrics(folder) -> list[dict]:
    return [json.loads(line) for line in Path(folder, "metrics.jsonl").read_text().splitlines()]


def _function_worker(rank, world_size, port, fn, args, out_file):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = fn(rank, world_size, *args)
    if rank == 0:
        torch.save(result, out_file)
    if dist.is_initialized():  # fn may have closed it (Trainer.close)
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_function(world_size: int, fn, tmp_path: Path, *args):
    """Run fn(rank, world_size, *args) on `world_size` spawned gloo ranks (fn must be a
    module-level function); return rank 0's result."""
    out_file = str(tmp_path / f"fn-{free_port()}.pt")
    mp.start_processes(_function_worker, args=(world_size, free_port(), fn, args, out_file),
                       nprocs=world_size, join=True, start_method="spawn")
    return torch.load(out_file, weights_only=False)


def train_job(config: str, overrides: list[str]) -> bool:
    """The whole job (SFT, drafter warm-up, RL) in this process, as run_train.sh would."""
    from titan_spec.config import load_config
    from titan_spec.trainer import Trainer

    trainer = Trainer(load_config(config, list(overrides)))
    try:
        trainer.train()
    finally:
        trainer.close()
    return True


# Keys whose values depend on the machine's speed or load, never compared to a golden run.
_VOLATILE_SUFFIXES = ("_s", "_per_s", "memory_gib")
_VOLATILE_KEYS = {"queue_depth"}
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def stable_metrics(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without timings (what a refactor must keep bit for bit)."""
    return [{k: v for k, v in r.items()
             if k not in _VOLATILE_KEYS and not k.endswith(_VOLATILE_SUFFIXES)} for r in records]


def _close(expected, actual, path: str, rel: float, errors: list) -> None:
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _close(e, a, f"{path}[{i}]", rel, errors)
    elif isinstance(expected, float) and isinstance(actual, (int, float)) \
            and not isinstance(actual, bool):
        if abs(expected - actual) > rel * max(abs(expected), abs(actual), 1e-6):
            errors.append(f"{path}: golden {expected!r}, now {actual!r}")
    elif expected != actual:
        errors.append(f"{path}: golden {expected!r}, now {actual!r}")


def check_golden(name: str, records: list[dict], rel: float = 1e-5) -> None:
    """Compare a run's stable metrics with tests/golden/<name>.json key by key (floats within
    `rel`; keys the golden run did not have are allowed). TITAN_SPEC_WRITE_GOLDEN=1 rewrites the file instead: do that only for a change
    that is meant to alter the numbers, and say so in the commit."""
    path = GOLDEN_DIR / f"{name}.json"
    stable = stable_metrics(records)
    if os.environ.get("TITAN_SPEC_WRITE_GOLDEN") == "1":
        path.write_text(json.dumps(stable, indent=1) + "\n")
        return
    golden = json.loads(path.read_text())
    errors = []
    if len(golden) != len(stable):
        errors.append(f"{len(stable)} records, golden has {len(golden)}: "
                      f"{[(r['phase'], r['step']) for r in stable]}")
    for i, (expected, actual) in enumerate(zip(golden, stable)):
        where = f"record {i} ({expected.get('phase')} step {expected.get('step')})"
        # New keys may appear (a metric added on purpose); every golden key must stay.
        missing = sorted(set(expected) - set(actual))
        if missing:
            errors.append(f"{where}: keys gone: {missing}")
        for key in set(expected) & set(actual):
            _close(expected[key], actual[key], f"{where} {key}", rel, errors)
    assert not errors, "metrics differ from " + str(path) + ":\n" + "\n".join(errors[:20])
