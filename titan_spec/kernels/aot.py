"""Compile the Triton kernels ahead of time for a GPU architecture, without a GPU.

    python -m titan_spec.kernels.aot --arch 90      # Hopper; prints one line per kernel

CI uses this to prove the kernels are valid compiled Triton, not only valid in the interpreter
(run it without TRITON_INTERPRET, which would turn the kernels into interpreted functions)."""

from __future__ import annotations

import argparse
import os

_POINTERS = {"draft_ids_ptr": "*i64", "draft_probs_ptr": "*fp32", "target_probs_ptr": "*fp32"}
ACCEPT_SIGNATURE = {**_POINTERS, "uniforms_ptr": "*fp64", "out_ptr": "*i64",
                    "num_accepted_ptr": "*i64", "num_drafts": "i32", "vocab_size": "i32",
                    "HAS_DRAFT_PROBS": "constexpr"}
RESAMPLE_SIGNATURE = {"num_accepted_ptr": "*i64", **_POINTERS, "noise_ptr": "*fp32",
                      "out_ptr": "*i64", "num_drafts": "i32", "vocab_size": "i32",
                      "HAS_DRAFT_PROBS": "constexpr", "BLOCK": "constexpr"}


def compile_all(arch: int = 90, warp_size: int = 32) -> dict[str, dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: ahead-of-time compilation needs real kernels")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .rejection_triton import accept_kernel, resample_kernel

    target = GPUTarget("cuda", arch, warp_size)
    results = {}
    for has_draft in (True, False):
        jobs = {
            f"accept_kernel[draft_probs={has_draft}]":
                (accept_kernel, ACCEPT_SIGNATURE, {"HAS_DRAFT_PROBS": has_draft}),
            f"resample_kernel[draft_probs={has_draft}]":
                (resample_kernel, RESAMPLE_SIGNATURE, {"HAS_DRAFT_PROBS": has_draft,
                                                       "BLOCK": 1024}),
        }
        for name, (fn, signature, constexprs) in jobs.items():
            compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs),
                                      target=target)
            results[name] = {"cubin_bytes": len(compiled.asm["cubin"]),
                             "ptx_target": f"sm_{arch}" if f".target sm_{arch}"
                             in compiled.asm["ptx"] else "?"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()
    for name, info in compile_all(args.arch).items():
        print(f"{name}: {info['ptx_target']} cubin {info['cubin_bytes']} bytes")


if __name__ == "__main__":
    main()
