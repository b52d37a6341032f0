import os
import subprocess

import pytest

# One thread per process: distributed tests run several ranks on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One instruction set on every CPU: the goldens compare 40 training steps to 1e-5, and AVX-512
# kernels (PyTorch's own, MKL's, oneDNN's) round differently from AVX2 ones; a golden written on
# one machine failed on the other from step 22 on. Spawned ranks and jobs inherit these.
for _key, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"),
                     ("ONEDNN_MAX_CPU_ISA", "AVX2")):
    os.environ.setdefault(_key, _value)
# The suite is the CPU suite, on a GPU machine too: its spawned gloo ranks and jobs (device
# auto) must not pick up a GPU. `make test-gpu` (TITAN_SPEC_GPU_TESTS=1) runs tests/gpu/.
if os.environ.get("TITAN_SPEC_GPU_TESTS") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 16 MiB tmpfs (a full disk for real): one checkpoint of the debug model fits,
    a second one, or the checkpoint and an export, do not."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

