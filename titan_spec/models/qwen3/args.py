"""Qwen3 shapes. The published ones follow the Hugging Face config.json of each release."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Qwen3Args:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int  # dense SwiGLU width
    vocab_size: int
    max_seq_len: int = 4096
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    # MoE (num_experts == 0 means dense)
    num_experts: int = 0
    top_k: int = 0
    moe_hidden_dim: int = 0
    norm_topk_prob: bool = True
    aux_loss_coef: float = 0.001
    # Numerics, not shape: attention in float64 makes its result independent of the key-window
    # length, so KV-cache decoding and a full forward agree to ~1e-7 (see README, mismatch).
    attention_fp64: bool = False

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def with_overrides(self, **overrides) -> "Qwen3Args":
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown model override(s) {sorted(unknown)}; valid: "
                f"{sorted(self.__dataclass_fields__)}."
            )
        return replace(self, **overrides)

    def num_params(self, include_embedding: bool = True) -> int:
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        attn += 2 * self.head_dim  # q/k norms
        if self.is_moe:
            router = self.dim * self.num_experts
            ffn = self.num_experts * 3 * self.dim * self.moe_hidden_dim + router
        else:
            ffn = 3 * self.dim * self.hidden_dim
        per_layer = attn + ffn + 2 * self.dim
        emb = self.vocab_size * self.dim
        total = self.n_layers * per_layer + self.dim + (emb if include_embedding else 0)
        if not self.tie_embeddings:
            total += emb
        return total

    def num_active_params(self) -> int:
        """Parameters touched per token (top_k experts instead of all of them)."""
        if not self.is_moe:
            return self.num_params()
        inactive = (self.num_experts - self.top_k) * 3 * self.dim * self.moe_hidden_dim
        return self.num_params() - self.n_layers * inactive


FLAVORS: dict[str, Qwen3Args] = {
    # CPU debug shapes: vocab 64 covers the character tokenizer and divides by tp in {1,2,4}.
    "debug": Qwen3Args(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                       hidden_dim=384, vocab_size=64, max_seq_len=512, rope_theta=10_000.0),
    "debug_moe": Qwen3Args(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                           hidden_dim=384, vocab_size=64, max_seq_len=512, rope_theta=10_000.0,
                           num_experts=8, top_k=2, moe_hidden_dim=128),
    # Rollout-benchmark target (~25M parameters, 100 MB in fp32): large enough that a CPU decode
    # step is bound by reading the weights, so verifying k+1 positions costs about one step.
    "bench_25M": Qwen3Args(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=64,
                           hidden_dim=1536, vocab_size=64, max_seq_len=512, rope_theta=10_000.0),
    "0.6B": Qwen3Args(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                      hidden_dim=3072, vocab_size=151936, max_seq_len=40960,
                      tie_embeddings=True),
    "8B": Qwen3Args(dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                    hidden_dim=12288, vocab_size=151936, max_seq_len=40960),
    "30B-A3B": Qwen3Args(dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128,
                         hidden_dim=6144, vocab_size=151936, max_seq_len=40960,
                         num_experts=128, top_k=8, moe_hidden_dim=768),
    "235B-A22B": Qwen3Args(dim=4096, n_layers=94, n_heads=64, n_kv_heads=4, head_dim=128,
                           hidden_dim=12288, vocab_size=151936, max_seq_len=40960,
                           num_experts=128, top_k=8, moe_hidden_dim=1536),
}
