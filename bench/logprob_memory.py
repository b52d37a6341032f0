"""Peak memory of the learner's logprob recompute and policy loss at vocabulary 151936: the
whole fp32 [B, L, V] at once against chunks of rows (rollout/sampling.py token_logprobs,
LOGPROB_CHUNK_ELEMENTS), side by side in one run, each arm in a fresh process.

The model is the debug Qwen3 with Qwen3's vocabulary (its logits are what matters); each arm
reports its peak RSS above the RSS before the forward, and the size of the [B, L, V] logits
the model itself returns (which both arms hold).

    python -m bench.logprob_memory --json out.json [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from bench.hf_load_memory import _peak_bytes, _start_measuring
from bench.rl_step import report

VOCAB = 151936
MIB = 2 ** 20


def child(chunked: bool, grad: bool, tokens: int) -> dict:
    from titan_spec.models import build_model_from_args
    from titan_spec.models.qwen3.args import FLAVORS
    from titan_spec.rollout.sampling import LOGPROB_CHUNK_ELEMENTS, SamplingParams, token_logprobs

    torch.manual_seed(0)
    args = FLAVORS["debug"].with_overrides(vocab_size=VOCAB, max_seq_len=tokens)
    model = build_model_from_args("qwen3", args, device="cpu")
    inputs = torch.randint(0, VOCAB, (2, tokens // 2))
    targets = torch.randint(0, VOCAB, (2, tokens // 2))
    chunk = LOGPROB_CHUNK_ELEMENTS if chunked else 2 ** 62
    sampling = SamplingParams(temperature=1.0)
    before = _start_measuring()
    with torch.set_grad_enabled(grad):
        logits = model(inputs)
        logprobs = token_logprobs(logits, targets, sampling, chunk_elements=chunk)
        if grad:
            logprobs.sum().backward()
    return {"peak_mib": (_peak_bytes() - before) / MIB,
            "logits_mib": logits.numel() * logits.element_size() / MIB,
            "logprobs_sum": float(logprobs.detach().double().sum())}


def run_arm(chunked: bool, grad: bool, tokens: int) -> dict:
    command = [sys.executable, "-m", "bench.logprob_memory", "--child",
               "chunked" if chunked else "whole", "--tokens", str(tokens)]
    if grad:
        command.append("--grad")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"arm failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--tokens", type=int, default=2048, help="positions in the batch (2 rows)")
    parser.add_argument("--child", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    parser.add_argument("--grad", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "chunked", args.grad, args.tokens)))
        return {}
    result = {"config": {"model": "qwen3 debug with vocab 151936", "tokens": args.tokens,
                         "rows": 2, "dtype": "float32"}}
    for stage, grad in (("recompute", False), ("loss_backward", True)):
        whole, chunked = run_arm(False, grad, args.tokens), run_arm(True, grad, args.tokens)
        if whole["logprobs_sum"] != chunked["logprobs_sum"]:
            raise SystemExit(f"{stage}: chunked logprobs differ from the whole ones")
        result[stage] = {"whole_peak_mib": whole["peak_mib"],
                         "chunked_peak_mib": chunked["peak_mib"],
                         "logits_mib": whole["logits_mib"],
                         "peak_ratio_whole_over_chunked": whole["peak_mib"] / chunked["peak_mib"]}
    return report(result, args.json)


if __name__ == "__main__":
    main()
