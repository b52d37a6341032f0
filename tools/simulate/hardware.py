"""Hardware profiles: what one accelerator can do, and how much of it a real stack gets.

Peak figures are the vendors' published dense bf16 numbers. The efficiencies and overheads are
the calibration: the GPU profiles carry the values fitted to the paper's measured Qwen3-8B
stage table and k sweep (`python -m tools.simulate --validate` fits them again, uses the fit,
and fails when the stored values differ); the `cpu` profile is measured on this machine
(`measure_cpu`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # peak dense FLOP/s per device in the compute dtype
    hbm_gb_s: float  # memory bandwidth per device, GB/s
    memory_gib: float  # memory per device, GiB (vendors quote GB: 141 GB = 131.3 GiB)
    nvlink_gb_s: float  # device-to-device bandwidth inside a node (one direction), GB/s
    net_gb_s: float  # network bandwidth per device between nodes, GB/s
    gpus_per_node: int
    # Calibration: fractions of peak a real decode / training step reaches, and fixed costs.
    decode_flop_eff: float = 0.5  # of `flops`, in decode and verification GEMMs
    bw_eff: float = 0.8  # of `hbm_gb_s`, reading weights and the KV cache
    train_mfu: float = 0.4  # of `flops`, in the learner's forward / backward (dense models)
    train_mfu_moe: float = 0.2  # the same for MoE models (small expert GEMMs, routing, imbalance)
    prefill_mfu: float = 0.5  # of `flops`, in the prompts' prefill
    iter_overhead_s: float = 0.0  # per decode iteration's target forward (launch, scheduler)
    layer_overhead_s: float = 0.0  # per layer of every forward (host dispatch; CPU eager)
    draft_step_overhead_s: float = 0.0  # per draft step (the drafter's own launch + sampling)
    collective_latency_s: float = 10e-6  # one tensor-parallel all-reduce, latency part

    def with_values(self, **values) -> "Hardware":
        out = replace(self, **values)
        for name in ("flops", "hbm_gb_s", "memory_gib", "nvlink_gb_s", "net_gb_s",
                     "gpus_per_node", "decode_flop_eff", "bw_eff", "train_mfu", "train_mfu_moe",
                     "prefill_mfu"):
            if not getattr(out, name) > 0:
                raise ValueError(f"{name} = {getattr(out, name)} must be positive.")
        for name in ("iter_overhead_s", "layer_overhead_s", "draft_step_overhead_s",
                     "collective_latency_s"):
            if not getattr(out, name) >= 0:
                raise ValueError(f"{name} = {getattr(out, name)} must be at least 0.")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


# Fitted by `python -m tools.simulate --validate` to the paper's figures (GB200: its measured
# Qwen3-8B RL-Zero k sweep and stage table, then its 235B projections within the 8B fit's
# valley); the same values serve every GB200 / H200 projection.
GPU_CALIBRATION = dict(decode_flop_eff=0.14, draft_step_overhead_s=5e-5, iter_overhead_s=5e-4)
# Stated, not fitted: the fraction of peak bandwidth a decode step reads at, the learner's
# MFU on dense and on MoE models (no published 235B measurement to fit them to), prefill's.
GPU_ASSUMED = dict(bw_eff=0.8, train_mfu=0.4, train_mfu_moe=0.25, prefill_mfu=0.5)

PROFILES = {
    # NVIDIA H200 SXM: 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e, 141 GB, NVLink 900 GB/s
    # (both directions), one 400 Gb/s InfiniBand port per GPU.
    "h200": Hardware("h200", flops=989e12, hbm_gb_s=4800.0, memory_gib=141e9 / 2 ** 30,
                     nvlink_gb_s=450.0, net_gb_s=50.0, gpus_per_node=8, **GPU_CALIBRATION,
                     **GPU_ASSUMED),
    # NVIDIA GB200 (one Blackwell GPU of an NVL72 rack): 2.5 PFLOP/s dense bf16, 8 TB/s,
    # 186 GB, NVLink 1.8 TB/s (both directions) across the 72-GPU domain, 800 Gb/s per GPU.
    "gb200": Hardware("gb200", flops=2.5e15, hbm_gb_s=8000.0, memory_gib=186e9 / 2 ** 30,
                      nvlink_gb_s=900.0, net_gb_s=100.0, gpus_per_node=72,
                      **GPU_CALIBRATION, **GPU_ASSUMED),
}


def measure_cpu(seconds_each: float = 0.5) -> Hardware:
    """The `cpu` profile, measured here with one thread (as each CPU rank runs): a STREAM-like
    read of 256 MiB for the bandwidth; a 1024^3 fp32 matrix product for the FLOP/s; one- and
    five-token forwards of a 25M-parameter Qwen3 (`decode_forwards`) for the fraction of that
    bandwidth a decode step reads at and the FLOP efficiency of verification's small-row
    products; and titan-spec's own rollout engine on
    width-128 models, whose bytes and FLOPs are negligible, for the fixed costs (per layer,
    per iteration, per draft step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        big = torch.ones(64 * 2 ** 20)
        stream = 4.0 * big.numel() / _best_s(lambda: big.sum(), seconds_each)
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        flops = 2.0 * 1024 ** 3 / _best_s(lambda: a @ b, seconds_each)
        fixed = engine_overheads()
        decode = decode_forwards(seconds_each)
    finally:
        torch.set_num_threads(threads)
    layers = decode["layers"] * fixed["layer_overhead_s"]
    memory_s = max(1e-9, decode["one_token_s"] - layers)
    compute_s = max(memory_s, decode["verify_s"] - layers)
    return Hardware("cpu", flops=flops, hbm_gb_s=stream / 1e9, memory_gib=16.0,
                    nvlink_gb_s=stream / 1e9 / 4, net_gb_s=stream / 1e9 / 4, gpus_per_node=2,
                    decode_flop_eff=min(1.0, decode["verify_flops"] / compute_s / flops),
                    bw_eff=min(1.0, decode["bytes"] / memory_s / stream), train_mfu=0.5,
                    train_mfu_moe=0.25, prefill_mfu=0.5, collective_latency_s=1.5e-3, **fixed)


def decode_forwards(seconds_each: float) -> dict:
    """A 25M-parameter Qwen3 (bench_25M, fp32: weights far beyond the caches) forwarding one
    token and five (the k + 1 rows of verification at k = 4): what a decode step reads at
    one row, and how fast the small-row products compute at five."""
    import torch

    from titan_spec.models import build_model_from_args
    from titan_spec.models.qwen3.args import FLAVORS

    args = FLAVORS["bench_25M"]
    model = build_model_from_args("qwen3", args, device="cpu").eval()
    one, five = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)
    with torch.no_grad():
        one_s = _best_s(lambda: model(one), seconds_each * 2)
        five_s = _best_s(lambda: model(five), seconds_each * 2)
    params = args.num_params(include_embedding=False) + args.vocab_size * args.dim
    return {"layers": args.n_layers, "bytes": 4.0 * params, "one_token_s": one_s,
            "verify_s": five_s, "verify_flops": 2.0 * params * 5}


def engine_overheads(tokens: int = 96, repeats: int = 5) -> dict:
    """Seconds per decode iteration of the real engine at batch 1 with a 2- and a 6-layer
    width-128 target (the difference: per layer; the rest: per iteration), then with a
    1-layer draft model at k = 4 (what is left after the target and the draft layers: per
    draft step). The best of `repeats` runs each."""
    from titan_spec.models.qwen3.args import FLAVORS

    def per_iteration(layers: int, draft_layers: int = 0) -> float:
        from titan_spec.drafters.draft_model import DraftModelDrafter
        from titan_spec.models import build_model_from_args
        from titan_spec.rollout.engine import RolloutEngine
        from titan_spec.rollout.sampling import SamplingParams

        target = build_model_from_args("qwen3", FLAVORS["debug"].with_overrides(
            n_layers=layers), device="cpu").eval()
        drafter = None
        if draft_layers:
            draft_args = FLAVORS["debug"].with_overrides(n_layers=draft_layers)
            drafter = DraftModelDrafter(
                build_model_from_args("qwen3", draft_args, device="cpu", seed=1).eval())
        engine = RolloutEngine(target, drafter, num_draft_tokens=4, max_batch_size=1,
                               max_seq_len=tokens + 16)
        params = SamplingParams(temperature=1.0, max_new_tokens=tokens, seed=0)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            engine.generate([[1, 2, 3, 4, 5, 6, 7, 8]], params)
            elapsed = time.perf_counter() - start
            best = min(best, elapsed / max(1, engine.last_stats["iterations"]))
        return best

    shallow, deep = per_iteration(2), per_iteration(6)
    layer = max(0.0, (deep - shallow) / 4)
    iteration = max(0.0, shallow - 2 * layer)
    speculative = per_iteration(2, draft_layers=1)
    draft_step = max(0.0, (speculative - shallow) / 4 - layer)
    return {"layer_overhead_s": layer, "iter_overhead_s": iteration,
            "draft_step_overhead_s": draft_step}


def _best_s(work, budget_s: float) -> float:
    """The fastest of repeated runs within about budget_s (the machine's best, not its
    noise)."""
    work()
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        start = time.perf_counter()
        work()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return best


def profile(name: str) -> Hardware:
    """A named profile; `cpu` is measured now."""
    if name in PROFILES:
        return PROFILES[name]
    if name != "cpu":
        raise ValueError(f"unknown hardware '{name}'; known: {', '.join([*PROFILES, 'cpu'])}.")
    return measure_cpu()
