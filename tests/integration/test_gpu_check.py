"""bench/gpu_check.sh --cpu: the prepared GPU check's phases at tiny sizes on CPU, so the script
a GPU session runs once cannot rot; and bench.fp8_spec runs on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def test_gpu_check_cpu_phases(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(results) == ["environment", "kernels", "lossless", "kernel_bandwidth",
                             "decode_speedup", "mismatch", "memory", "fp8", "main_job"]
    assert all(result["ok"] for result in results.values())
    assert results["kernels"]["cases"] == 32 and not results["kernels"]["failed"]
    assert results["mismatch"]["torch.float32"]["max"] < 1e-5  # bf16 is the one to correct
    # one rank cannot run bf16 (FSDP2 mixed precision needs data-parallel ranks): refused
    assert results["main_job"]["bfloat16"]["rc"] == 2
    assert "| kernels | True |" in (tmp_path / "gpu_check.md").read_text()


def test_fp8_spec_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "fp8.json"
    proc = subprocess.run([sys.executable, "-m", "bench.fp8_spec", "--prompts", "2", "--tokens",
                           "8", "--samples", "400", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for arm in ("high", "fp8"):
        assert result[arm]["plain_tokens_per_s"] > 0 and len(
            result[arm]["acceptance_per_position"]) == 3
    assert result["kl_fp8_vs_high_precision"] > 0
