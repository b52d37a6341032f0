import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Every test here needs CUDA: skipped, with the reason, on a machine without one (and in
    `make test`, which hides the GPUs from the CPU suite; `make test-gpu` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
