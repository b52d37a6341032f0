#!/usr/bin/env bash
# The one prepared check for a machine with one GPU, under 10 minutes: bench/gpu_check.py's
# phases, JSON and a markdown table in $OUT (default gpu_check_out/).
#   bash bench/gpu_check.sh          on the GPU machine
#   bash bench/gpu_check.sh --cpu    the same phases at tiny sizes on CPU (in the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "${1:-}" = "--cpu" ]; then
    # Triton kernels in the interpreter on CPU tensors; no GPU picked up by any phase.
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi
exec timeout 570 "$PY" -m bench.gpu_check "$@"
