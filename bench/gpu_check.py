"""The one prepared check for a machine with one GPU (bench/gpu_check.sh runs it; --cpu runs the
same phases at tiny sizes on CPU, in the test suite, so the script cannot rot).

Phases, each recorded even when another fails: environment and versions; the Triton rejection
sampler equal to the PyTorch reference across batch, k, vocabulary (up to 151936) and rule;
chi-square losslessness of the engine; kernel bandwidth as a share of HBM peak; decode speed-up
speculative / plain; rollout-vs-recompute mismatch in fp32 and bf16; peak memory of a logprob
recompute at vocabulary 151936; FP8 GEMMs (emulated vs torch._scaled_mm, row locality); the
main job end to end in fp32 and bf16. Writes OUT/gpu_check.json and OUT/gpu_check.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HBM_PEAK_BYTES_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


@dataclass
class Sizes:
    batches: tuple
    ks: tuple
    vocabs: tuple
    samples: int  # per chi-square
    flavor: str  # decode speed-up target
    decode_tokens: int
    recompute: tuple  # (batch, sequence) at vocabulary 151936
    job_steps: tuple  # (sft, rl, drafter warm-up) steps


GPU = Sizes((1, 8, 64), (1, 4, 8), (64, 32000, 151936), 20_000, "bench_25M", 64, (4, 1024),
            (20, 3, 20))
CPU = Sizes((1, 3), (1, 3), (64, 300), 3000, "debug", 8, (1, 64), (2, 1, 2))


def environment(device, sizes) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    nccl=".".join(map(str, torch.cuda.nccl.version())))
    for module in ("triton", "transformer_engine", "torchao"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return {**info, "ok": True}


def _kernel_case(batch, k, vocab, rule, has_draft, device, seed):
    from titan_spec.kernels.counter_rng import ACCEPT, RESIDUAL, RandomKeys, exponentials, uniforms
    from titan_spec.kernels.rejection_reference import rejection_sample_reference
    from titan_spec.kernels.rejection_triton import rejection_sample_triton

    gen = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(batch, k + 1, vocab, generator=gen) * 2, dim=-1)
    draft = torch.softmax(torch.randn(batch, k, vocab, generator=gen) * 2, dim=-1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).view(batch, k)
    draft_probs = draft if has_draft else None
    keys = RandomKeys.of(2**40 + seed, torch.randint(0, 2**31, (batch,), generator=gen),
                         torch.randint(0, 2**20, (batch,), generator=gen))
    expected = rejection_sample_reference(ids, draft_probs, target, uniforms(keys, k, ACCEPT),
                                          exponentials(keys, vocab, RESIDUAL), rule)
    on_device = RandomKeys(keys.seed, keys.request_ids.to(device), keys.positions.to(device))
    got = rejection_sample_triton(ids.to(device), None if draft_probs is None
                                  else draft_probs.to(device), target.to(device), on_device, rule)
    return torch.equal(got.cpu(), expected)


def kernels(device, sizes) -> dict:
    cases, failed = 0, []
    for batch in sizes.batches:
        for k in sizes.ks:
            for vocab in sizes.vocabs:
                for rule in ("token", "block"):
                    for has_draft in (True, False):
                        cases += 1
                        if not _kernel_case(batch, k, vocab, rule, has_draft, device, cases):
                            failed.append([batch, k, vocab, rule, has_draft])
    return {"cases": cases, "failed": failed, "ok": not failed}


def lossless(device, sizes) -> dict:
    from tests.exact import exact_sequence_probs, outcome_samples
    from tests.stats import P_VALUE_FLOOR, chi_square_p_value
    from titan_spec.drafters import build_drafter
    from titan_spec.models import build_model
    from titan_spec.rollout.engine import RolloutEngine
    from titan_spec.rollout.sampling import SamplingParams

    target = build_model("qwen3", "debug", seed=0, device=device).eval()
    small = build_model("qwen3", "debug", seed=5, n_layers=1, device=device).eval()
    params, vocab, prompt = SamplingParams(temperature=1.0, max_new_tokens=3, seed=31), 6, [1, 2]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    p_values = {}
    for rule in ("token", "block"):
        engine = RolloutEngine(target, build_drafter("draft_model", model=small),
                               num_draft_tokens=2, max_batch_size=sizes.samples, max_seq_len=16,
                               vocab_size=vocab, verify=rule)
        out = engine.generate([prompt] * sizes.samples, params)
        p_values[rule] = chi_square_p_value(outcome_samples(out, outcomes), exact.cpu())
    return {"p_values": p_values, "ok": all(p > P_VALUE_FLOOR for p in p_values.values())}


def kernel_bandwidth(device, sizes) -> dict:
    from titan_spec.kernels import rejection_sample

    batch, k, vocab = max(sizes.batches), max(sizes.ks), max(sizes.vocabs)
    gen = torch.Generator().manual_seed(0)
    target = torch.softmax(torch.randn(batch, k + 1, vocab, generator=gen), -1).to(device)
    draft = torch.softmax(torch.randn(batch, k, vocab, generator=gen), -1).to(device)
    ids = torch.randint(0, vocab, (batch, k), generator=gen).to(device)
    rejection_sample(ids, draft, target, generator=torch.Generator().manual_seed(1))  # warm-up
    _sync(device)
    start, repeats = time.perf_counter(), 10
    for repeat in range(repeats):
        rejection_sample(ids, draft, target, generator=torch.Generator().manual_seed(repeat))
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    read = (target.nbytes + draft.nbytes) / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((value for key, value in HBM_PEAK_BYTES_S.items() if key in name), None)
    return {"shape": [batch, k, vocab], "ms": seconds * 1e3, "read_gb_s": read / 1e9,
            "hbm_peak_fraction": read / peak if peak else None, "ok": True}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_speedup(device, sizes) -> dict:
    from bench.fp8_spec import _layer_skip_draft
    from titan_spec.models import build_model
    from titan_spec.rollout.engine import RolloutEngine
    from titan_spec.rollout.sampling import SamplingParams

    target = build_model("qwen3", sizes.flavor, seed=0, device=device).eval()
    params = SamplingParams(temperature=1.0, max_new_tokens=sizes.decode_tokens, seed=3)
    result = {"flavor": sizes.flavor}
    for batch in (1, max(sizes.batches)):
        prompts = [[1, 7, 8, 9]] * batch
        seconds = {}
        for arm, drafter in (("plain", None), ("speculative", _layer_skip_draft(target))):
            engine = RolloutEngine(target, drafter, num_draft_tokens=3, max_batch_size=batch,
                                   max_seq_len=sizes.decode_tokens + 16)
            engine.generate(prompts, params)  # warm-up
            _sync(device)
            start = time.perf_counter()
            engine.generate(prompts, params)
            _sync(device)
            seconds[arm] = time.perf_counter() - start
        result[f"batch_{batch}_speedup"] = seconds["plain"] / seconds["speculative"]
    return {**result, "ok": True}


def mismatch(device, sizes) -> dict:
    from bench.fp8_spec import _gaps, _recompute
    from titan_spec.models import build_model
    from titan_spec.rollout.engine import RolloutEngine
    from titan_spec.rollout.sampling import SamplingParams

    table = {}
    prompts = [[1, 5, 6, 7], [1, 9, 9], [1, 3, 4, 5, 6]]
    for dtype in (torch.float32, torch.bfloat16):
        model = build_model("qwen3", "debug", seed=0, device=device).eval().to(dtype)
        model.init_buffers(device)
        params = SamplingParams(temperature=1.0, max_new_tokens=sizes.decode_tokens, seed=5)
        out = RolloutEngine(model, max_batch_size=len(prompts),
                            max_seq_len=64).generate(prompts, params)
        behaviour = torch.cat([torch.tensor(c.logprobs) for c in out])
        table[str(dtype)] = _gaps(behaviour, _recompute(model, prompts, out).cpu())
    return {**table, "ok": True}


def memory(device, sizes) -> dict:
    if device.type != "cuda":
        return {"skipped": "no device allocator statistics on CPU", "ok": True}
    from titan_spec.models import build_model

    batch, seq = sizes.recompute
    model = build_model("qwen3", "debug", seed=0, device=device, vocab_size=151936).eval()
    tokens = torch.randint(3, 1000, (batch, seq), device=device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        logits = model(tokens)
        torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1))
    peak = torch.cuda.max_memory_allocated(device) - base
    return {"batch_seq_vocab": [batch, seq, 151936], "recompute_peak_gib": peak / 2**30,
            "fp32_logits_gib": batch * seq * 151936 * 4 / 2**30, "ok": True}


def fp8(device, sizes) -> dict:
    from titan_spec.parallel.fp8 import fp8_matmul, quantize

    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 256, generator=gen).to(device)
    weight = (torch.randn(128, 256, generator=gen) * 0.1).to(device)
    result = {}
    for recipe in ("rowwise", "tensorwise"):
        input_fp8, input_scale = quantize(inputs, recipe)
        weight_fp8, weight_scale = quantize(weight, recipe)
        scales = (input_scale, weight_scale.T.contiguous()) if recipe == "rowwise" else (
            input_scale.reshape(()), weight_scale.reshape(()))
        reference = torch._scaled_mm(input_fp8, weight_fp8.T, scale_a=scales[0],
                                     scale_b=scales[1], out_dtype=torch.float32)
        gap = (fp8_matmul(inputs, weight, recipe) - reference).abs().max() / reference.abs().max()
        result[f"{recipe}_emulated_vs_scaled_mm"] = float(gap)
    ok = all(value < 1e-4 for value in result.values())
    return {**result, "ok": ok}


def _job(device, sizes, dtype: str) -> dict:
    sft, rl, distill = sizes.job_steps
    env = dict(os.environ, NPROC="1")
    command = ["./run_train.sh", "--config", "debug_model.toml", f"--sft.steps={sft}",
               f"--rl.steps={rl}", f"--drafter.distill_steps={distill}", "--sft.eval_problems=0",
               "--rl.eval_problems=0", "--rl.prompts_per_step=4", "--rl.group_size=2",
               "--rollout.max_new_tokens=12", "--training.seq_len=64",
               f"--parallelism.param_dtype={dtype}", f"--training.device={device.type}",
               f"--job.dump_folder={env.get('OUT', '/tmp')}/gpu_check_job_{dtype}",
               "--checkpoint.enable=false", "--metrics.enable_tensorboard=false"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return {"rc": proc.returncode, "tail": tail}


def main_job(device, sizes) -> dict:
    result = {dtype: _job(device, sizes, dtype) for dtype in ("float32", "bfloat16")}
    return {**result, "ok": result["float32"]["rc"] == 0}


PHASES = [environment, kernels, lossless, kernel_bandwidth, decode_speedup, mismatch, memory,
          fp8, main_job]


def run(device, sizes) -> dict:
    results = {}
    for phase in PHASES:
        start = time.perf_counter()
        try:
            results[phase.__name__] = phase(device, sizes)
        except Exception as err:  # a phase's failure is a result; the others still run
            results[phase.__name__] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                       "trace": traceback.format_exc().splitlines()[-5:]}
        results[phase.__name__]["seconds"] = time.perf_counter() - start
    return results


def table(results: dict) -> str:
    lines = ["| phase | ok | seconds | result |", "| --- | --- | --- | --- |"]
    for name, result in results.items():
        shown = {k: v for k, v in result.items() if k not in ("ok", "seconds", "trace")}
        lines.append(f"| {name} | {result.get('ok', '-')} | {result['seconds']:.1f} | "
                     f"`{json.dumps(shown, default=str)[:400]}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    args = parser.parse_args(argv)
    if args.cpu:
        device, sizes = torch.device("cpu"), CPU
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda", 0), GPU
    else:
        print("gpu_check: no CUDA device; run with --cpu for the CPU phases", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["OUT"] = str(out.resolve())
    results = run(device, sizes)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(table(results) + "\n")
    print(table(results))
    return 0 if all(result.get("ok") for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
