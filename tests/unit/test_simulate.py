"""The step-time simulator (tools/simulate): its limits behave as the roofline says, its
calibration reproduces what it is given, its CLI, and its validation against the published
results and our benchmarks stays inside the issue's bounds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from titan_spec.models.qwen3.args import FLAVORS
from tools.simulate.__main__ import main
from tools.simulate.costs import target_shape, weight_bytes_read
from tools.simulate.hardware import GPU_CALIBRATION, PROFILES, measure_cpu
from tools.simulate.step import simulate
from tools.simulate.validate import FIT_GRID, validate
from tools.simulate.workload import Workload

# One sequence length for all (sigma 0), one slot each, a tiny vocabulary and no overheads:
# the decode cost per iteration is the same plain or speculative unless compute binds.
UNIFORM = Workload(model=FLAVORS["8B"].with_overrides(vocab_size=64), gpus=1, rollout_tp=1,
                   prompts_per_step=4, group_size=1, prompt_len=16.0, response_mean=400.0,
                   response_sigma=0.0, response_max=4096, max_batch_size=4, drafter="ngram",
                   k=4, acceptance_length=4.0)
NO_OVERHEAD = PROFILES["h200"].with_values(iter_overhead_s=0.0, draft_step_overhead_s=0.0,
                                           prefill_mfu=1e9)


def test_memory_bound_decode_gains_the_acceptance_length():
    fast_compute = NO_OVERHEAD.with_values(flops=1e30)
    result = simulate(UNIFORM, fast_compute)
    assert result["generation_speedup"] == pytest.approx(4.0, rel=1e-3)


def test_compute_bound_verification_costs_its_width():
    # Compute-bound: an iteration of width k + 1 costs k + 1 plain ones.
    slow_compute = NO_OVERHEAD.with_values(flops=1e9, hbm_gb_s=1e9)
    result = simulate(UNIFORM, slow_compute)
    assert result["generation_speedup"] == pytest.approx(4.0 / 5.0, rel=1e-2)


def test_verification_reads_more_experts_at_small_batch():
    shape = target_shape(FLAVORS["235B-A22B"], 2.0)
    one, five = weight_bytes_read(shape, 1, 2.0), weight_bytes_read(shape, 5, 2.0)
    assert five > 2 * one  # 8 of 128 experts per token: 5 tokens touch far more of them
    assert weight_bytes_read(shape, 4096, 2.0) == pytest.approx(shape.dense_params * 2 + 94
                                                                * 128 * shape.expert_params * 2)


def test_calibration_reproduces_the_measured_plain_run():
    measured = replace(UNIFORM, drafter="eagle", measured_generation_s=30.0,
                       measured_logprob_s=2.0, measured_train_s=5.0, measured_step_s=40.0)
    result = simulate(measured, PROFILES["h200"])
    plain = result["plain"]
    assert plain["stages"]["generation_s"] == pytest.approx(30.0)
    assert plain["stages"]["logprob_s"] + plain["stages"]["train_s"] == pytest.approx(7.0)
    assert plain["step_s"] == pytest.approx(40.0)
    assert result["speculative"]["stages"]["data_s"] == pytest.approx(3.0)  # the rest, unchanged


def test_async_overlaps_the_meshes_and_picks_a_split():
    work = replace(UNIFORM, gpus=8, mode="async", rollout_gpus=0, drafter="eagle",
                   prompts_per_step=64)
    result = simulate(work, PROFILES["h200"])
    spec = result["speculative"]
    learner = sum(spec["stages"][k] for k in ("logprob_s", "train_s", "drafter_s"))
    assert spec["step_s"] == pytest.approx(
        spec["stages"]["weight_sync_s"] + max(spec["stages"]["generation_s"], learner))
    assert 0 < spec["rollout"]["rollout_gpus"] < 8
    assert result["speedup_vs_sync_plain"] > 0


def test_cli_projects_the_235b_config(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["--config", "235b_moe_async.toml", "--hardware", "gb200", "--set", "k=5",
                 "--set", "acceptance_length=4", "--json", str(out),
                 "--plot", str(tmp_path / "sim.png")]) == 0
    result = json.loads(out.read_text())
    assert result["workload"]["k"] == 5 and result["acceptance_length"] == 4.0
    for arm in ("plain", "speculative"):
        assert set(result[arm]["stages"]) >= {"generation_s", "logprob_s", "train_s",
                                              "weight_sync_s"}
    assert result["generation_speedup"] > 1 and result["step_speedup"] > 0
    assert (tmp_path / "sim.png").stat().st_size > 0
    assert "generation speed-up" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--set", "kk=3"], "Did you mean 'k'"),
    (["--set", "k=three"], "expected an int"),
    (["--set", "mode=pipeline"], "expected sync or async"),
    (["--set", "rollout_tp=3"], "do not split into replicas"),
    (["--set", "k"], "expected KEY=VALUE"),
    (["--set", "rollout_tp=0"], "rollout_tp = 0 must be at least 1"),
    (["--set", "hbm_gb_s=0"], "hbm_gb_s = 0.0 must be positive"),
    (["--set", "acceptance_length=0.5"], "at least 1"),
    (["--set", "acceptance=1.5"], "must be in [0, 1]"),
    (["--set", "response_mean=nan"], "out of range"),
    (["--set", "rollout_gpus=0", "--set", "measured_generation_s=40"], "describe one layout"),
    (["--set", "rollout_gpus=8", "--set", "measured_step_s=1"], "less than the stages"),
])
def test_cli_names_bad_settings(args, message, capsys):
    assert main(["--config", "235b_moe_async.toml", *args]) == 2
    assert message in capsys.readouterr().err


def test_validation_within_the_bounds():
    result = validate(measure_cpu(seconds_each=0.3))
    failing = [row for rows in result["tables"].values() for row in rows if not row["ok"]]
    assert not failing, failing
    # The GPU profiles carry the calibration the fit finds.
    assert result["gpu_calibration"] == {k: GPU_CALIBRATION[k] for k in FIT_GRID}
