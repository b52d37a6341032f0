"""Preallocated KV cache: one [max_batch_size, max_seq_len, H_kv, D] key and value buffer per
layer, indexed by slot (continuous batching gives each running sequence a slot).

Writes go to absolute positions and attention masks keys by position (key_pos <= query_pos), so
rewinding after a rejected draft is free: the next forward overwrites the stale entries before
any query can see them. A view limits attention to the first `attend_len` positions, so decode
cost follows the longest live sequence, not max_seq_len."""

from __future__ import annotations

import torch


def prefill_batch(prompts: list[list[int]], device):
    """Every prompt token but the last (the first verify step feeds it), right-padded:
    -> (tokens [B, L], positions [B, L]), or None when all prompts are one token long.
    Padding writes junk at positions >= len(prompt) - 1, which later writes overwrite before
    any query can attend to them."""
    longest = max(len(p) for p in prompts) - 1
    if longest <= 0:
        return None
    tokens = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt) - 1] = torch.tensor(prompt[:-1], device=device)
    return tokens, torch.arange(longest, device=device).expand(len(prompts), longest)


class LayerView:
    def __init__(self, keys, values, key_positions, slots, attend_len: int,
                 block: slice | None = None):
        self.keys, self.values, self.key_positions = keys, values, key_positions
        self.slots, self.attend_len, self.block = slots, attend_len, block

    def update(self, new_keys, new_values, positions):
        """new_keys/new_values [B, T, H, D] at positions [B, T] -> keys/values [B, S, H, D] and
        their positions [S], S = attend_len. Rows that are one contiguous block of slots are
        read in place (a view); scattered rows are gathered (a copy)."""
        span = slice(0, self.attend_len)
        if self.block is not None or self.slots is None:
            block = self.block or slice(0, positions.shape[0])
            keys, values = self.keys[block], self.values[block]
            rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
            keys[rows, positions] = new_keys.to(keys.dtype)
            values[rows, positions] = new_values.to(values.dtype)
            return keys[:, span], values[:, span], self.key_positions[span]
        rows = self.slots
        self.keys[rows.unsqueeze(1), positions] = new_keys.to(self.keys.dtype)
        self.values[rows.unsqueeze(1), positions] = new_values.to(self.values.dtype)
        return self.keys[rows, span], self.values[rows, span], self.key_positions[span]


def contiguous_block(slots) -> slice | None:
    """slice(a, b) when the slot list is a, a+1, ..., b-1 (checked on the host), else None."""
    if isinstance(slots, (list, tuple, range)) and len(slots) and \
            list(slots) == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0], slots[0] + len(slots))
    return None


def compute_dtype(model) -> torch.dtype:
    """The dtype a model computes K / V in: its weights' (bf16 under bf16 FSDP2 or a bf16 rollout
    model), not the float32 RoPE tables'. A cache in it stores K / V as computed."""
    return model.tok_embeddings.weight.dtype


class KVCacheView:
    def __init__(self, cache: "KVCache", slots, attend_len: int):
        self.block = contiguous_block(slots)
        if isinstance(slots, (list, tuple, range)):
            slots = torch.as_tensor(list(slots), device=cache.key_positions.device)
        self.cache, self.slots, self.attend_len = cache, slots, attend_len

    def layer(self, index: int) -> LayerView:
        keys, values = self.cache.keys[index], self.cache.values[index]
        return LayerView(keys, values, self.cache.key_positions, self.slots, self.attend_len,
                         self.block)


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, max_seq_len: int, num_kv_heads: int,
                 head_dim: int, dtype=torch.float32, device=None):
        shape = (batch_size, max_seq_len, num_kv_heads, head_dim)
        self.max_batch_size, self.max_seq_len = batch_size, max_seq_len
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.key_positions = torch.arange(max_seq_len, device=device)

    @classmethod
    def for_model(cls, model, batch_size: int, max_seq_len: int, tp_degree: int = 1, **kw):
        args = model.args
        if args.n_kv_heads % tp_degree:
            raise ValueError(f"n_kv_heads={args.n_kv_heads} is not divisible by tp={tp_degree}.")
        return cls(args.n_layers, batch_size, max_seq_len, args.n_kv_heads // tp_degree,
                   args.head_dim, **kw)

    def view(self, slots=None, attend_len: int | None = None):
        """Rows of the forward batch -> cache slots: a tensor, a list of slot numbers (a run
        of consecutive ones is then read in place), or None (row i is slot i)."""
        return KVCacheView(self, slots, attend_len or self.max_seq_len)

    def layer(self, index: int) -> LayerView:
        return self.view().layer(index)

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)
