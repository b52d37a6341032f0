"""Plain decoding at batch 1 against this machine's memory-bandwidth bound.

    python -m bench.decode_bound --json out.json

A decode step at batch 1 must read every weight once, so it cannot beat
bandwidth / weight bytes tokens per second. The bandwidth is measured in this process the way
STREAM does (best of --repeats): `read` sums a buffer far larger than the caches, `copy` moves
one buffer into another (counted as read + write). The decode arm is the rollout engine's plain
loop on a `bench_25M`-shaped model (random weights, no stop token, --tokens new tokens per
prompt); the bound uses the bytes of every weight a step reads (all but the embedding table, of
which a step reads one row). `matmul` is the rate at which the step's own one-row matrix
products (this BLAS's GEMV) read those weights: the ceiling of an eager decode step. Arms
interleave over the repeats; reported: the best bandwidths, the median tokens/s and its
fraction of the read-bandwidth bound."""

from __future__ import annotations

import argparse
import time
from statistics import median

import torch

from bench.rl_step import report
from titan_spec.models import build_model
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams


def bandwidth(megabytes: int) -> dict:
    """GB/s of a read (sum) and a copy over buffers of `megabytes` each."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.zeros_like(source)  # touched: no page faults inside the timed copy
    start = time.perf_counter()
    source.sum()
    read = source.nbytes / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    target.copy_(source)
    copy = 2 * source.nbytes / (time.perf_counter() - start) / 1e9
    return {"read_gb_s": read, "copy_gb_s": copy}


@torch.no_grad()
def matmul_read_gb_s(model) -> float:
    """GB/s at which the step's own matrix-vector products (F.linear at one row, as a decode
    step at batch 1 runs them) read the model's weight matrices, all of them once: the
    ceiling an eager decode step has on this BLAS, whatever its other overhead."""
    embedding = model.tok_embeddings.weight
    matrices = [p for p in model.parameters() if p.dim() == 2 and p is not embedding]
    rows = {m.shape[1]: torch.randn(1, m.shape[1]) for m in matrices}
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for matrix in matrices:
            torch.nn.functional.linear(rows[matrix.shape[1]], matrix)
        elapsed = time.perf_counter() - start
        best = max(best, sum(m.nbytes for m in matrices) / elapsed / 1e9)
    return best


def weight_bytes_per_step(model) -> int:
    """Bytes of the weights one decode step reads: all but the embedding table."""
    embedding = model.tok_embeddings.weight
    tied = model.output.weight is embedding
    return sum(p.nbytes for p in model.parameters() if p is not embedding or tied)


def decode(model, tokens: int, seed: int) -> float:
    """tokens/s of plain decoding, one prompt of 8 tokens, batch 1."""
    engine = RolloutEngine(model, max_batch_size=1, max_seq_len=tokens + 16)
    params = SamplingParams(temperature=1.0, max_new_tokens=tokens, seed=seed)
    start = time.perf_counter()
    completion = engine.generate([[1, 2, 3, 4, 5, 6, 7, 8]], params)[0]
    return len(completion.token_ids) / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--buffer-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model("qwen3", args.flavor, seed=0).eval()
    step_bytes = weight_bytes_per_step(model)
    decode(model, 16, 0)  # warm-up
    reads, copies, speeds, matmuls = [], [], [], []
    for repeat in range(args.repeats):
        measured = bandwidth(args.buffer_mb)
        reads.append(measured["read_gb_s"])
        copies.append(measured["copy_gb_s"])
        matmuls.append(matmul_read_gb_s(model))
        speeds.append(decode(model, args.tokens, repeat))
    bound = max(reads) * 1e9 / step_bytes
    result = {
        "threads": args.threads, "flavor": args.flavor, "dtype": "float32",
        "weight_bytes_per_step": step_bytes,
        "bandwidth_read_gb_s": max(reads), "bandwidth_copy_gb_s": max(copies),
        "matmul_read_gb_s": max(matmuls),
        "matmul_fraction_of_read": max(matmuls) / max(reads),
        "bound_tokens_per_s": bound, "plain_decode_tokens_per_s": median(speeds),
        "plain_decode_each_repeat": speeds,
        "fraction_of_bound": median(speeds) / bound,
    }
    return report(result, args.json)


if __name__ == "__main__":
    main()
