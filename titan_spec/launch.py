"""run_train.sh's torchrun: NPROC workers on this node, and an exit that says how the job ended.

    python -m titan_spec.launch --nproc N -- --config NAME.toml [overrides]
    python -m titan_spec.launch --nproc N --nnodes M --rdzv-endpoint HOST:PORT --rdzv-id ID -- ...
    python -m titan_spec.launch --nproc N --rdzv-id ID --verdict -- ...   (how run ID ended)

One node: torchrun's standalone rendezvous. Several nodes (one launcher per node, as
tools/slurm/train.sbatch starts them): c10d rendezvous on HOST:PORT, which hands out ranks by
arrival (rank 0 need not be on the first node); the rendezvous id is the run's id on every node,
so each launcher reads the same status.json verdict after a preemption.

It runs torchrun's agent in this process with what a preemptible job needs and plain torchrun
does not do by default: SIGUSR1 (Slurm's --signal=USR1@N) is forwarded to the workers like
SIGTERM, the workers get `checkpoint.preempt_grace_s` to finish their step and save before
the agent kills them (torchrun's default is 30 s), and a second signal does not cut that
short. The workers print their own errors, one
line each; torchrun's report of a failed worker (a traceback and a table) is replaced by a
line only where no worker could speak for itself (a rank killed by a signal).

Exit status: 0 done, 75 preempted (a checkpoint of the last step was written: rerun the same
command to resume), 130 interrupted, 1 failed."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from titan_spec.components.run_status import read_status
from titan_spec.components.stop_signal import PREEMPTED_EXIT, STOP_SIGNALS

SCRIPT = Path(__file__).resolve().parents[1] / "run_train.sh"
# Signals torchrun's agent handles itself; SIGTERM / SIGUSR1 go through _stop_once.
AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def rendezvous_argv(nnodes: int, endpoint: str | None, rdzv_id: str | None) -> list[str]:
    """torchrun's rendezvous flags: standalone on one node, c10d on `endpoint` across nodes."""
    if nnodes == 1 and endpoint is None:
        return ["--standalone"]
    if not endpoint or not rdzv_id:
        raise ValueError(f"--nnodes={nnodes} needs --rdzv-endpoint HOST:PORT (the head node's "
                         "address) and --rdzv-id (the same on every node, e.g. the Slurm job id)")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--rdzv-endpoint={endpoint!r} is not HOST:PORT")
    return ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
            "--rdzv_id", rdzv_id]


def torchrun_argv(nproc: int, grace_s: int, trainer_args: list[str], nnodes: int = 1,
                  endpoint: str | None = None, rdzv_id: str | None = None) -> list[str]:
    return [*rendezvous_argv(nnodes, endpoint, rdzv_id), "--nproc_per_node", str(nproc),
            "--signals-to-handle", AGENT_SIGNALS, "--shutdown-timeout", str(grace_s),
            "--no-python", str(SCRIPT), *trainer_args]


def _failed_ranks(failures: dict) -> int:
    """The status for workers that exited non-zero; a line for each killed by a signal."""
    codes = {rank: failure.exitcode for rank, failure in failures.items()}
    if PREEMPTED_EXIT in codes.values():
        return PREEMPTED_EXIT  # the others lost their peers after the save
    for rank, code in sorted(codes.items()):
        if code < 0:
            name = signal.Signals(-code).name
            print(f"titan-spec: rank {rank} was killed by {name}"
                  + (" (out of memory?)" if name == "SIGKILL" else "") + ".",
                  file=sys.stderr, flush=True)
    return 1


def _signalled(sigval, dump_folder: str, run_id: str, grace_s: int) -> int:
    """The launcher itself got a signal: the agent forwarded it and waited for the workers."""
    status = read_status(dump_folder) or {}
    if status.get("run_id") == run_id and status.get("state") in ("preempted", "done"):
        return PREEMPTED_EXIT if status["state"] == "preempted" else 0
    if sigval == signal.SIGINT:
        return 130
    print(f"titan-spec: stopped by {sigval.name}; the ranks did not save within "
          f"checkpoint.preempt_grace_s = {grace_s} s (raise it to give the save more time).",
          file=sys.stderr, flush=True)
    return 1


def _stop_once(signum, frame) -> None:
    """The first SIGTERM / SIGUSR1 stops the agent as its own handler would (it forwards the
    signal to the workers and waits up to the grace period); later ones are ignored, since
    torchrun's handler, raised again inside that wait, would cut the grace short and kill
    the workers mid-save."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sigval = signal.Signals(signum)
    raise SignalException(f"launcher got {sigval.name}", sigval=sigval)


def _quiet_agent() -> None:
    """The agent's log lines about failed or closing workers repeat what the workers print
    (their loggers carry their own levels, so each is set)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch(torchrun_args: list[str], grace_s: int, dump_folder: str,
           run_id: str | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    run_id = os.environ["TITAN_SPEC_RUN_ID"] = run_id or uuid.uuid4().hex
    _quiet_agent()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_once)
    args = get_args_parser().parse_args(torchrun_args)
    try:
        run(args)
    except ChildFailedError as err:
        return _failed_ranks(err.failures)
    except SignalException as err:
        return _signalled(err.sigval, dump_folder, run_id, grace_s)
    return 0


def verdict(dump_folder: str, run_id: str | None) -> int:
    """How run `run_id` ended, from its status.json: 0 done, 75 preempted (a checkpoint of
    its last step is written), 1 anything else. For a multi-node job script, whose srun
    reports the worst of its tasks: a node killed after its peers' preemption save would
    turn the job's 75 into a signal's status."""
    status = read_status(dump_folder) or {}
    if run_id is None or status.get("run_id") != run_id:
        return 1
    return {"done": 0, "preempted": PREEMPTED_EXIT}.get(status.get("state"), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titan_spec.launch", allow_abbrev=False)
    parser.add_argument("--nproc", type=int, required=True, help="workers on this node")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes, one launcher on each")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the head node")
    parser.add_argument("--rdzv-id", default=None, help="the job's id, the same on every node")
    parser.add_argument("--verdict", action="store_true",
                        help="start nothing: exit with how run --rdzv-id ended (0 / 75 / 1)")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else \
        args.trainer_args
    from titan_spec.config import load_config

    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    known.add_argument("--config", "--job.config_file", dest="config", default=None)
    parsed, overrides = known.parse_known_args(trainer_args)
    cfg = load_config(parsed.config, overrides)  # the preflight already checked it
    if args.verdict:
        return verdict(cfg.job.dump_folder, args.rdzv_id)
    grace_s = cfg.checkpoint.preempt_grace_s
    try:
        torchrun_args = torchrun_argv(args.nproc, grace_s, trainer_args, args.nnodes,
                                      args.rdzv_endpoint, args.rdzv_id)
    except ValueError as err:
        print(f"titan-spec: error: {err}", file=sys.stderr)
        return 2
    return launch(torchrun_args, grace_s, cfg.job.dump_folder, args.rdzv_id)


if __name__ == "__main__":
    sys.exit(main())
