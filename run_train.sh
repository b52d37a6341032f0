#!/usr/bin/env bash
# Launcher. Two modes:
#   ./run_train.sh --config NAME.toml [--section.key=value ...]
#       spawns torchrun itself with NPROC ranks (default: GPUs present, else 2 on CPU);
#   NNODES=M RDZV_ENDPOINT=HOST:PORT RDZV_ID=ID ./run_train.sh --config ...   (on each node)
#       one launcher per node, NPROC ranks each, c10d rendezvous on the head node's HOST:PORT
#       (tools/slurm/train.sbatch starts these with srun);
#   torchrun --nproc_per_node N --no-python ./run_train.sh --config ...
#       runs as a worker: torchrun has set RANK/WORLD_SIZE, so start the trainer directly.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${TORCHELASTIC_RUN_ID:-}" ] || { [ -n "${RANK:-}" ] && [ -n "${WORLD_SIZE:-}" ]; }; then
    exec "$PYTHON" -m titan_spec.train "$@"
fi

if [ -z "${NPROC:-}" ]; then
    NPROC=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    [ "$NPROC" -gt 0 ] || NPROC=2
fi
# Fail in a second, before any worker starts, when the config or layout cannot work.
# A dry run (--job.dry_run=true) happens here too: exit 3 / 4 = planned, fits / does not fit.
NNODES=${NNODES:-1}
rc=0
"$PYTHON" -m titan_spec.train --preflight --world-size "$((NNODES * NPROC))" "$@" || rc=$?
case "$rc" in
    0) ;;
    3) exit 0 ;;
    4) exit 1 ;;
    *) exit "$rc" ;;
esac
# torchrun with SIGUSR1 forwarded, the preemption grace period, one line per failure, and
# exit status 0 done / 75 preempted (rerun to resume) / 1 failed (titan_spec/launch.py).
nodes=(--nnodes "$NNODES")
[ -z "${RDZV_ENDPOINT:-}" ] || nodes+=(--rdzv-endpoint "$RDZV_ENDPOINT")
[ -z "${RDZV_ID:-}" ] || nodes+=(--rdzv-id "$RDZV_ID")
exec "$PYTHON" -m titan_spec.launch --nproc "$NPROC" "${nodes[@]}" -- "$@"
