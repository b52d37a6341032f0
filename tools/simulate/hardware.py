"""Hardware profiles: what one accelerator can do, and how much of it a real stack gets.

Peak figures are the vendors' published dense bf16 numbers. The efficiencies and overheads are
the calibration: the GPU profiles carry the values fitted to the paper's measured Qwen3-8B
stage table and k sweep (`python -m tools.simulate --validate` refits them and shows the
errors); the `cpu` profile is measured on this machine (`measure_cpu`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # peak dense FLOP/s per device in the compute dtype
    hbm_gb_s: float  # memory bandwidth per device, GB/s
    memory_gib: float  # memory per device
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
        return replace(self, **values)

    def as_dict(self) -> dict:
        return asdict(self)


# Fitted by `python -m tools.simulate --validate` on the paper's Qwen3-8B RL-Zero workload
# (GB200); the same values serve every GB200 / H200 projection.
GPU_CALIBRATION = dict(decode_flop_eff=0.15, draft_step_overhead_s=0.0, iter_overhead_s=0.0)
# Stated, not fitted: the fraction of peak bandwidth a decode step reads at, the learner's
# MFU on dense and on MoE models (no published 235B measurement to fit them to), prefill's.
GPU_ASSUMED = dict(bw_eff=0.8, train_mfu=0.4, train_mfu_moe=0.25, prefill_mfu=0.5)

PROFILES = {
    # NVIDIA H200 SXM: 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e, 141 GB, NVLink 900 GB/s
    # (both directions), one 400 Gb/s InfiniBand port per GPU.
    "h200": Hardware("h200", flops=989e12, hbm_gb_s=4800.0, memory_gib=141.0,
                     nvlink_gb_s=450.0, net_gb_s=50.0, gpus_per_node=8, **GPU_CALIBRATION,
                     **GPU_ASSUMED),
    # NVIDIA GB200 (one Blackwell GPU of an NVL72 rack): 2.5 PFLOP/s dense bf16, 8 TB/s,
    # 186 GB, NVLink 1.8 TB/s (both directions) across the 72-GPU domain, 800 Gb/s per GPU.
    "gb200": Hardware("gb200", flops=2.5e15, hbm_gb_s=8000.0, memory_gib=186.0,
                      nvlink_gb_s=900.0, net_gb_s=100.0, gpus_per_node=72,
                      **GPU_CALIBRATION, **GPU_ASSUMED),
}


def measure_cpu(seconds_each: float = 0.5) -> Hardware:
    """The `cpu` profile, measured here with one thread (as each CPU rank runs): a STREAM-like
    read of 256 MiB for the bandwidth; a 1024^3 fp32 matrix product for the FLOP/s; a
    one-row product with a 64 MiB matrix (what a batch-1 decode step does to each weight) for
    the fraction of that bandwidth decoding reaches; and a one-token forward of the 4-layer
    debug Qwen3 (whose bytes and FLOPs are negligible) for the per-layer host overhead."""
    import torch

    from titan_spec.models import build_model_from_args
    from titan_spec.models.qwen3.args import FLAVORS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        big = torch.ones(64 * 2 ** 20)
        stream = 4.0 * big.numel() / _best_s(lambda: big.sum(), seconds_each)
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        flops = 2.0 * 1024 ** 3 / _best_s(lambda: a @ b, seconds_each)
        weight, row = torch.randn(4096, 4096), torch.randn(1, 4096)
        gemv = 4.0 * weight.numel() / _best_s(lambda: row @ weight, seconds_each)
        args = FLAVORS["debug"]
        model = build_model_from_args("qwen3", args).eval()
        tokens = torch.zeros(1, 1, dtype=torch.long)
        with torch.no_grad():
            layer_s = _best_s(lambda: model(tokens), seconds_each) / args.n_layers
    finally:
        torch.set_num_threads(threads)
    return Hardware("cpu", flops=flops, hbm_gb_s=stream / 1e9, memory_gib=16.0,
                    nvlink_gb_s=stream / 1e9 / 4, net_gb_s=stream / 1e9 / 4, gpus_per_node=2,
                    decode_flop_eff=1.0, bw_eff=gemv / stream, train_mfu=0.5,
                    train_mfu_moe=0.25, prefill_mfu=0.5, layer_overhead_s=layer_s,
                    collective_latency_s=1.5e-3)


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
