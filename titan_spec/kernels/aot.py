"""Compile the Triton kernels ahead of time for a GPU architecture, without a GPU.

    python -m titan_spec.kernels.aot --arch 90      # Hopper; prints one line per kernel

CI uses this to prove the kernels are valid compiled Triton, not only valid in the interpreter
(run it without TRITON_INTERPRET, which would turn the kernels into interpreted functions)."""

from __future__ import annotations

import argparse
import os

_POINTERS = {"draft_ids_ptr": "*i64", "draft_probs_ptr": "*fp32", "target_probs_ptr": "*fp32"}
_KEYS = {"request_ptr": "*i64", "position_ptr": "*i64", "seed": "i64"}
ACCEPT_SIGNATURE = {**_POINTERS, **_KEYS, "out_ptr": "*i64", "num_accepted_ptr": "*i64",
                    "scale_ptr": "*fp64", "num_drafts": "i32", "vocab_size": "i32",
                    "HAS_DRAFT_PROBS": "constexpr"}
BLOCK_ACCEPT_SIGNATURE = {**ACCEPT_SIGNATURE, "BLOCK": "constexpr"}
RESAMPLE_SIGNATURE = {"num_accepted_ptr": "*i64", "scale_ptr": "*fp64", **_POINTERS, **_KEYS,
                      "out_ptr": "*i64", "num_drafts": "i32", "vocab_size": "i32",
                      "HAS_DRAFT_PROBS": "constexpr", "BLOCK": "constexpr"}
SAMPLE_SIGNATURE = {"probs_ptr": "*fp32", **_KEYS, "stream": "i32", "out_ptr": "*i64",
                    "vocab_size": "i32", "BLOCK": "constexpr"}


def _jobs():
    from .rejection_triton import (
        block_accept_kernel,
        resample_kernel,
        sample_kernel,
        token_accept_kernel,
    )

    jobs = {"sample_kernel": (sample_kernel, SAMPLE_SIGNATURE, {"BLOCK": 1024})}
    for has_draft in (True, False):
        flag = {"HAS_DRAFT_PROBS": has_draft}
        jobs[f"token_accept_kernel[draft_probs={has_draft}]"] = (
            token_accept_kernel, ACCEPT_SIGNATURE, flag)
        jobs[f"block_accept_kernel[draft_probs={has_draft}]"] = (
            block_accept_kernel, BLOCK_ACCEPT_SIGNATURE, {**flag, "BLOCK": 1024})
        jobs[f"resample_kernel[draft_probs={has_draft}]"] = (
            resample_kernel, RESAMPLE_SIGNATURE, {**flag, "BLOCK": 1024})
    return jobs


def compile_all(arch: int = 90, warp_size: int = 32) -> dict[str, dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: ahead-of-time compilation needs real kernels")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .rejection_triton import LAUNCH_OPTIONS

    target = GPUTarget("cuda", arch, warp_size)
    results = {}
    for name, (fn, signature, constexprs) in _jobs().items():
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs),
                                  target=target, options=LAUNCH_OPTIONS)
        ptx = compiled.asm["ptx"]
        results[name] = {"cubin_bytes": len(compiled.asm["cubin"]),
                         "ptx_target": f"sm_{arch}" if f".target sm_{arch}" in ptx else "?",
                         "approximate_f64_division": "div.approx.f64" in ptx
                         or "div.full.f64" in ptx}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()
    for name, info in compile_all(args.arch).items():
        print(f"{name}: {info['ptx_target']} cubin {info['cubin_bytes']} bytes")
        if info["approximate_f64_division"]:
            raise SystemExit(f"{name}: approximate float64 division in the PTX")


if __name__ == "__main__":
    main()
