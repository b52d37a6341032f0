"""Preallocated KV cache: one [B, max_seq_len, H_kv, D] key and value buffer per layer.

Writes go to absolute positions, and attention masks keys by position (key_pos <= query_pos),
so rewinding after a rejected draft is free: later writes overwrite the stale entries and the
mask hides them until then."""

from __future__ import annotations

import torch


class LayerKVCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, key_positions: torch.Tensor):
        self.keys, self.values, self.key_positions = keys, values, key_positions

    def update(self, new_keys, new_values, positions):
        """new_keys/new_values [B, T, H, D] at positions [B, T] -> full buffers, key positions."""
        batch_index = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
        self.keys[batch_index, positions] = new_keys.to(self.keys.dtype)
        self.values[batch_index, positions] = new_values.to(self.values.dtype)
        return self.keys, self.values, self.key_positions


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, max_seq_len: int, num_kv_heads: int,
                 head_dim: int, dtype=torch.float32, device=None):
        shape = (batch_size, max_seq_len, num_kv_heads, head_dim)
        positions = torch.arange(max_seq_len, device=device)
        self.layers = [
            LayerKVCache(torch.zeros(shape, dtype=dtype, device=device),
                         torch.zeros(shape, dtype=dtype, device=device), positions)
            for _ in range(num_layers)
        ]

    @classmethod
    def for_model(cls, model, batch_size: int, max_seq_len: int, tp_degree: int = 1, **kw):
        args = model.args
        if args.n_kv_heads % tp_degree:
            raise ValueError(f"n_kv_heads={args.n_kv_heads} is not divisible by tp={tp_degree}.")
        return cls(args.n_layers, batch_size, max_seq_len, args.n_kv_heads // tp_degree,
                   args.head_dim, **kw)

    def layer(self, index: int) -> LayerKVCache:
        return self.layers[index]

    def nbytes(self) -> int:
        return sum(c.keys.nbytes + c.values.nbytes for c in self.layers)
