"""`python -m tools.simulate --validate`: the simulator against the published results
(arXiv 2604.26779) and against our own benchmarks on this machine.

Assumptions (printed with the tables; the README repeats them):
- The paper's workloads are not fully published. Both use the same stated RL workload: 512
  prompts x 16 samples per step, 256-token prompts, response lengths log-normal with mean
  5000 tokens and shape 0.3 cut at 16384, 128 decode slots per replica, an EAGLE-3 head with
  a 32000-token draft vocabulary, bf16, on GB200.
- Qwen3-8B RL-Zero: 32 GPUs, one replica per GPU (tp = 1). Calibrated on it: the plain
  generation time (100.0 s) scales generation, the plain step (151.2 s) scales the learner;
  the GPU profile's decode FLOP efficiency, per-draft-step and per-iteration overheads are the
  ONE hardware calibration, fitted on a grid to the three k points and the k = 3 step.
- Qwen3-235B-A22B: rollout replicas of tp = 8; the learner's MoE MFU is the profile's
  `train_mfu_moe` (0.25, stated, not fitted: nothing measured at 235B is published); async
  takes the split of devices best for the speculative arm, and its end-to-end figure is
  against plain synchronous RL on the same devices.
- Ours: the committed bench results (bench/results/rl_step_cpu.json, async_rl_cpu.json); the
  cpu profile is measured now; the plain arm's measured stage times calibrate, the
  speculative arm's measured acceptance length is given, its times are predicted."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

from titan_spec.models.qwen3.args import FLAVORS
from tools.simulate.hardware import GPU_CALIBRATION, PROFILES, Hardware
from tools.simulate.step import simulate
from tools.simulate.workload import Workload

ROOT = Path(__file__).resolve().parents[2]

PAPER_WORKLOAD = dict(prompts_per_step=512, group_size=16, prompt_len=256.0,
                      response_mean=5000.0, response_sigma=0.3, response_max=16384,
                      max_batch_size=128, drafter="eagle3", draft_vocab=32000, dtype_bytes=2.0)
PAPER_8B = Workload(model=FLAVORS["8B"], model_name="8B", gpus=32, rollout_tp=1,
                    measured_generation_s=100.0, measured_step_s=151.2, **PAPER_WORKLOAD)
# (k, acceptance length, generation speed-up) measured on RL-Zero; k = 3 is the stage table.
PAPER_K_SWEEP = ((3, 3.32, 100.0 / 56.6), (5, 4.35, 1.44), (7, 5.06, 1.21))
PAPER_8B_STEP_K3_S = 107.5
PAPER_235B = Workload(model=FLAVORS["235B-A22B"], model_name="235B-A22B", gpus=512,
                      rollout_tp=8, activation_checkpoint=True, **PAPER_WORKLOAD)
FIT_GRID = dict(decode_flop_eff=(0.12, 0.13, 0.14, 0.15, 0.16, 0.18),
                draft_step_overhead_s=(0.0, 5e-5, 1e-4, 2e-4),
                iter_overhead_s=(0.0, 2.5e-4, 5e-4))


def _row(what: str, published: float, simulated: float, bound: float) -> dict:
    error = simulated / published - 1.0
    return {"what": what, "published": published, "simulated": simulated, "error": error,
            "bound": bound, "ok": abs(error) <= bound}


def paper_8b_rows(hw: Hardware) -> list[dict]:
    rows = []
    for k, accept, speedup in PAPER_K_SWEEP:
        result = simulate(replace(PAPER_8B, k=k, acceptance_length=accept), hw)
        rows.append(_row(f"8B k={k} (acceptance {accept}): generation speed-up", speedup,
                         result["generation_speedup"], 0.10))
        if k == 3:
            rows.append(_row("8B k=3: generation seconds", 56.6,
                             result["speculative"]["stages"]["generation_s"], 0.10))
            rows.append(_row("8B k=3: step seconds", PAPER_8B_STEP_K3_S,
                             result["speculative"]["step_s"], 0.10))
    return rows


def fit_gpu_calibration(base: Hardware) -> Hardware:
    """The grid point whose worst error over the published figures, each relative to its
    bound (10% for the measured 8B points, 15% for the 235B projections), is smallest. The 8B
    points alone leave a flat valley (worst errors of 7.4-7.5% for calibrations whose 235B
    errors differ by 3 points), so the projections take part in choosing within it."""
    best, best_error = base, float("inf")
    names = list(FIT_GRID)
    for values in itertools.product(*FIT_GRID.values()):
        trial = base.with_values(**dict(zip(names, values, strict=True)))
        worst = max(abs(row["error"]) / row["bound"] for row in paper_8b_rows(trial))
        if worst >= min(best_error, 1.0):
            continue  # outside the 8B bound, or no better: the projections cannot help
        worst = max(worst, *(abs(row["error"]) / row["bound"] for row in paper_235b_rows(trial)))
        if worst < best_error:
            best, best_error = trial, worst
    return best


def paper_235b_rows(hw: Hardware) -> list[dict]:
    sync = simulate(replace(PAPER_235B, k=3, acceptance_length=3.0), hw)
    asynchronous = simulate(replace(PAPER_235B, k=5, acceptance_length=4.0, gpus=2048,
                                    mode="async", rollout_gpus=0, policy_lag=2), hw)
    return [
        _row("235B sync, 512 GPUs, k=3, acceptance 3: rollout speed-up", 2.72,
             sync["generation_speedup"], 0.15),
        _row("235B sync, 512 GPUs: end-to-end speed-up", 1.70, sync["step_speedup"], 0.15),
        _row("235B async, 2048 GPUs, lag 2, k=5, acceptance 4: rollout speed-up", 3.5,
             asynchronous["generation_speedup"], 0.15),
        _row("235B async + speculation vs sync plain: end-to-end speed-up", 2.5,
             asynchronous["speedup_vs_sync_plain"], 0.15),
    ]


def _bench(name: str) -> dict:
    path = ROOT / "bench" / "results" / name
    if not path.is_file():
        raise ValueError(f"{path} is missing; run the benchmark (see the README's Measured).")
    return json.loads(path.read_text())


def _ours(config: dict, plain: dict, steps: int, accept: float, response: float) -> Workload:
    """The 25M benchmark job: 2 CPU ranks, fp32, one decode slot per generating rank, the
    2-layer width-128 draft model, responses of the run's mean length, prompts of about 8
    tokens (a 1-3 digit sum: not in the results); calibrated by the plain arm's measured
    stages."""
    return Workload(model=FLAVORS[config["policy"]], model_name=config["policy"], gpus=2,
                    dtype_bytes=4.0, rollout_tp=1, prompts_per_step=config["prompts_per_step"],
                    group_size=config["group_size"], prompt_len=8.0, response_mean=response,
                    response_sigma=0.3, response_max=64,
                    max_batch_size=config.get("decode_slots_per_rank",
                                              config.get("decode_slots_per_generating_rank", 1)),
                    drafter="draft_model", draft_layers=2, draft_dim=128, k=config["k"],
                    acceptance_length=accept,
                    measured_generation_s=plain["time_rollout_s"] / steps,
                    measured_logprob_s=plain["time_logprob_s"] / steps,
                    measured_train_s=plain["time_train_s"] / steps,
                    measured_step_s=plain["step_time_s"] / steps)


def ours_rows(hw: Hardware) -> list[dict]:
    rl = _bench("rl_step_cpu.json")
    response = sum(rl["response_len_curves"]["plain"]) / len(rl["response_len_curves"]["plain"])
    work = _ours(rl["config"], rl["breakdown_s"]["plain"], rl["config"]["timed_steps"],
                 rl["acceptance_length"], response)
    result = simulate(work, hw)
    rows = [_row("bench.rl_step: rollout speed-up", rl["rollout_speedup"],
                 result["generation_speedup"], 0.15),
            _row("bench.rl_step: step speed-up", rl["step_speedup"], result["step_speedup"],
                 0.15)]
    asy = _bench("async_rl_cpu.json")
    steps, run = asy["config"]["steady_state_steps"], asy["runs"][0]
    accept = run["async_speculative"]["acceptance_length"]
    response = run["sync_plain"]["generated_tokens"] / (
        asy["config"]["steps"] * asy["config"]["prompts_per_step"] * asy["config"]["group_size"])
    sync = simulate(_ours(asy["config"], run["sync_plain"]["breakdown_s"], steps, accept,
                          response), hw)
    # The async arms are calibrated by the async plain run (its own layout: one rollout rank,
    # one learner rank, whose learner on this CPU is not twice the 2-rank one).
    async_plain = dict(run["async_plain"]["breakdown_s"])
    work = replace(_ours(asy["config"], async_plain, steps, accept, response), mode="async",
                   rollout_gpus=1, policy_lag=asy["config"]["max_policy_lag"])
    asynchronous = simulate(work, hw)
    sync_plain_step = run["sync_plain"]["breakdown_s"]["step_time_s"] / steps
    measured = asy["end_to_end_speedup"]
    rows += [_row("bench.async_rl: sync + speculation vs sync plain, end to end",
                  measured["sync_speculative"], sync["step_speedup"], 0.15),
             _row("bench.async_rl: async + speculation vs sync plain, end to end",
                  measured["async_speculative"],
                  sync_plain_step / asynchronous["speculative"]["step_s"], 0.15)]
    return rows


def validate(cpu: Hardware) -> dict:
    gpu = fit_gpu_calibration(PROFILES["gb200"])
    fitted = {name: getattr(gpu, name) for name in FIT_GRID}
    tables = {"paper_8b": paper_8b_rows(gpu), "paper_235b": paper_235b_rows(gpu),
              "ours_cpu": ours_rows(cpu)}
    stored = all(GPU_CALIBRATION[k] == v for k, v in fitted.items())
    return {"gpu_calibration": fitted, "stored_calibration_matches": stored,
            "cpu_profile": cpu.as_dict(), "tables": tables,
            "ok": stored and all(row["ok"] for rows in tables.values() for row in rows)}


def format_tables(result: dict) -> str:
    lines = [__doc__.split("\n\n", 1)[1].strip(), "",
             "GPU calibration (fitted to the published figures): " + ", ".join(
                 f"{k} = {v:g}" for k, v in result["gpu_calibration"].items())
             + ("" if result["stored_calibration_matches"] else
                "  DIFFERS from hardware.GPU_CALIBRATION: store the fitted values")]
    titles = {"paper_8b": "1. Qwen3-8B RL-Zero, measured (arXiv 2604.26779), GB200",
              "paper_235b": "2. Qwen3-235B-A22B, the paper's projections, GB200",
              "ours_cpu": "3. Our measured runs on this machine (cpu profile)"}
    for key, title in titles.items():
        lines += ["", title, f"  {'':64} {'published':>10} {'simulated':>10} {'error':>8}"]
        for row in result["tables"][key]:
            mark = "" if row["ok"] else f"  OUTSIDE +-{row['bound']:.0%}"
            lines.append(f"  {row['what']:64} {row['published']:10.3f} {row['simulated']:10.3f} "
                         f"{row['error']:+8.1%}{mark}")
    lines.append("")
    lines.append("all within bounds" if result["ok"] else "NOT all within bounds")
    return "\n".join(lines)
