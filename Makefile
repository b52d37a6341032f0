# `make train` and `make test` do all set-up on a fresh machine (idempotent), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test test-gpu lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU machines: take the local CPU build first so the range in pyproject is already met.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev]'
	# torchtitan's own Qwen3 state-dict adapter is the reference of the torchtitan format tests.
	# Only the adapter is imported: take the package and what that import needs, not its
	# training stack (datasets, wandb, torchdata).
	$(PY) -m pip install -q --no-deps torchtitan==0.3.0 spmd_types==0.2.3 torch_checkpointing \
		tyro docstring_parser einops
	# megatron-core's GPTModel is the reference of the Megatron format tests (CPU, local spec).
	$(PY) -m pip install -q --no-deps megatron-core==0.16.1
	touch $(STAMP)

train: $(STAMP)
	./run_train.sh --config debug_model.toml

test: $(STAMP)
	$(PY) -m pytest -q tests

# On a machine with a GPU: the CUDA tests (tests/gpu/, skipped elsewhere).
test-gpu: $(STAMP)
	TITAN_SPEC_GPU_TESTS=1 $(PY) -m pytest -q tests/gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check titan_spec tests bench tools

clean:
	rm -rf $(VENV) outputs
