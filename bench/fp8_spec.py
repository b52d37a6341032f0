"""FP8 and speculation side by side: high precision / FP8 (rowwise, parallel/fp8.py) x plain /
speculative decoding on the same prompts and seeds.

    python -m bench.fp8_spec --json out.json [--flavor debug] [--prompts 16] [--tokens 32]

High precision is float32 on CPU (bf16 matmuls are ~90x slower there) and bfloat16 on CUDA; FP8
is the emulated backend on CPU. The drafter is a layer-skip draft model (the target's first
layer, embedding and head). Reported per precision: tokens/s of each arm and the speculative
speed-up, acceptance per position, a two-sample chi-square of plain vs speculative 3-token
continuations over a 6-token vocabulary (same distribution expected: lossless), and KL(fp8 ||
high precision) of next-token distributions. Mismatch: the FP8 rollout's behaviour logprobs
against a recompute with the same FP8 forward (the learner verifies, so rollout and recompute
share it) and against a high-precision recompute (FP8 rollout, bf16 learner: the setup that
needs importance-sampling correction), p50 / p99 / max."""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bench.rl_step import report
from titan_spec.drafters import build_drafter
from titan_spec.models import build_model
from titan_spec.parallel.fp8 import convert_to_fp8
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams, process_logits

KEEP = ("tok_embeddings", "output", "router")


def _targets(flavor: str, dtype) -> dict:
    high = build_model("qwen3", flavor, seed=0).eval().to(dtype)
    high.init_buffers("cpu")
    fp8 = copy.deepcopy(high)
    convert_to_fp8(fp8, "rowwise", KEEP)
    return {"high": high, "fp8": fp8}


def _layer_skip_draft(target):
    """The target's first layer with its embedding, norm and head (same precision)."""
    draft = copy.deepcopy(target)
    for name in list(draft.layers)[1:]:
        del draft.layers[name]
    draft.args = target.args.with_overrides(n_layers=1)
    return build_drafter("draft_model", model=draft)


def _timed(engine, prompts, params) -> tuple[list, float]:
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    return out, time.perf_counter() - start


def _speed(target, prompts, tokens: int, k: int, seed: int) -> dict:
    params = SamplingParams(temperature=1.0, max_new_tokens=tokens, seed=seed)
    plain, plain_s = _timed(RolloutEngine(target, max_batch_size=len(prompts), max_seq_len=256),
                            prompts, params)
    engine = RolloutEngine(target, _layer_skip_draft(target), num_draft_tokens=k,
                           max_batch_size=len(prompts), max_seq_len=256)
    spec, spec_s = _timed(engine, prompts, params)
    count = sum(len(c.token_ids) for c in plain)
    stats = engine.last_stats
    per_position = [a / max(d, 1) for a, d in zip(stats["accepted_per_position"],
                                                  stats["drafted_per_position"], strict=True)]
    return {"plain_tokens_per_s": count / plain_s,
            "spec_tokens_per_s": sum(len(c.token_ids) for c in spec) / spec_s,
            "speedup": plain_s / spec_s * sum(len(c.token_ids) for c in spec) / count,
            "acceptance_length": stats["acceptance_length"],
            "acceptance_per_position": per_position, "completions": plain}


def _two_sample_p_value(first: torch.Tensor, second: torch.Tensor, bins: int) -> float:
    """Chi-square test that two samples of outcome ids come from one distribution."""
    counts = torch.stack([torch.bincount(first, minlength=bins),
                          torch.bincount(second, minlength=bins)]).double()
    counts = counts[:, counts.sum(0) > 0]
    expected = counts.sum(1, keepdim=True) * counts.sum(0, keepdim=True) / counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = counts.shape[1] - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         statistic / 2)) if dof > 0 else 1.0


def _lossless(target, samples: int, k: int, seed: int) -> float:
    vocab, prompt = 6, [1, 2]
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=seed)
    ids = []
    for drafter in (None, _layer_skip_draft(target)):
        engine = RolloutEngine(target, drafter, num_draft_tokens=k, max_batch_size=samples,
                               max_seq_len=16, vocab_size=vocab)
        out = engine.generate([prompt] * samples, params)
        ids.append(torch.tensor([sum(t * vocab ** i for i, t in enumerate(c.token_ids))
                                 for c in out if len(c.token_ids) == 3]))
    return _two_sample_p_value(ids[0], ids[1], vocab ** 3)


@torch.no_grad()
def _recompute(model, prompts, completions) -> torch.Tensor:
    """Full-sequence logprobs of each completion's tokens, flattened."""
    logprobs = []
    params = SamplingParams(temperature=1.0)
    device = model.tok_embeddings.weight.device
    for prompt, completion in zip(prompts, completions, strict=True):
        sequence = torch.tensor([prompt + completion.token_ids], device=device)
        probs = process_logits(model(sequence)[0, :, :model.args.vocab_size].float(), params)
        start = len(prompt) - 1
        picked = probs[start:start + len(completion.token_ids)].gather(
            -1, torch.tensor(completion.token_ids, device=device).unsqueeze(-1)).squeeze(-1)
        logprobs.append(picked.clamp(min=1e-30).log().cpu())
    return torch.cat(logprobs)


def _gaps(behaviour: torch.Tensor, recomputed: torch.Tensor) -> dict:
    gap = (behaviour - recomputed).abs().double()
    return {"p50": float(gap.quantile(0.5)), "p99": float(gap.quantile(0.99)),
            "max": float(gap.max())}


@torch.no_grad()
def _kl(fp8, high, prompts, completions) -> float:
    total, count = 0.0, 0
    for prompt, completion in zip(prompts, completions, strict=True):
        sequence = torch.tensor([prompt + completion.token_ids])
        vocab = fp8.args.vocab_size
        log_fp8 = torch.log_softmax(fp8(sequence)[0, :, :vocab].double(), -1)
        log_high = torch.log_softmax(high(sequence)[0, :, :vocab].double(), -1)
        total += float((log_fp8.exp() * (log_fp8 - log_high)).sum())
        count += sequence.shape[1]
    return total / count


def run(flavor: str, prompt_count: int, tokens: int, k: int, samples: int, seed: int) -> dict:
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    targets = _targets(flavor, dtype)
    generator = torch.Generator().manual_seed(seed)
    prompts = [[1] + torch.randint(3, 60, (8,), generator=generator).tolist()
               for _ in range(prompt_count)]
    result = {"flavor": flavor, "high_precision": str(dtype), "fp8": "emulated rowwise",
              "prompts": prompt_count, "tokens": tokens, "k": k}
    for name, target in targets.items():
        speed = _speed(target, prompts, tokens, k, seed)
        completions = speed.pop("completions")
        result[name] = {**speed, "lossless_p_value": _lossless(target, samples, k, seed)}
        if name == "fp8":
            behaviour = torch.cat([torch.tensor(c.logprobs) for c in completions])
            result["mismatch_fp8_rollout_vs_fp8_recompute"] = _gaps(
                behaviour, _recompute(target, prompts, completions))
            result["mismatch_fp8_rollout_vs_high_precision_recompute"] = _gaps(
                behaviour, _recompute(targets["high"], prompts, completions))
            result["kl_fp8_vs_high_precision"] = _kl(target, targets["high"], prompts,
                                                     completions)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="debug")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4000, help="per arm, for the chi-square")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.flavor, args.prompts, args.tokens, args.k, args.samples, args.seed)
    return report(result, args.json)


if __name__ == "__main__":
    main()
