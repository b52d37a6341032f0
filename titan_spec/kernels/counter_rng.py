"""Counter-based random numbers for the decode loop: Philox4x32-10 keyed by the run's seed, with
the counter (element, request, position, stream).

A number depends only on its key, never on which other requests share the batch or in what
order they were drawn, so a request gives the same tokens alone or inside any batch, and a whole
iteration's numbers come from one vectorised call (or from inside the Triton kernels on CUDA,
which call `tl.philox` on the same key and counter). This module is the CPU twin: the same
Philox rounds as Triton's `tl.philox`, and the same conversions to floats.

Counter layout: c0 = element (draft index for uniforms; vocabulary id // 4 for exponentials,
which use all four output words), c1 = request (the prompt's index in its generate call),
c2 = position (tokens committed when the iteration starts; it grows every iteration, so no
counter is ever reused), c3 = stream. Conversions:
  uniform in [0, 1), 53 bits: ((w0 >> 5) * 2**26 + (w1 >> 6)) * 2**-53
  exponential > 0: -log((w + 0.5) * 2**-32), float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ACCEPT, RESIDUAL, DRAFT = 0, 1, 2  # streams; draft step j uses DRAFT + j

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_SHIFT32 = np.uint64(32)
_LOW32 = np.uint64(_MASK32)


@dataclass(frozen=True)
class RandomKeys:
    """The key of every row of one iteration: one seed, and per row its request and position."""

    seed: int
    request_ids: torch.Tensor  # [B] int64
    positions: torch.Tensor  # [B] int64

    def __post_init__(self):
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed={self.seed} must be in [0, 2**63).")

    @classmethod
    def of(cls, seed: int, request_ids, positions, device=None) -> "RandomKeys":
        as_long = lambda values: torch.as_tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return cls(int(seed), as_long(request_ids), as_long(positions))

    @property
    def device(self) -> torch.device:
        return self.request_ids.device

    def __len__(self) -> int:
        return self.request_ids.numel()


def philox4x32(seed: int, c0, c1, c2, c3, rounds: int = 10):
    """Philox4x32 on uint64 numpy arrays holding 32-bit values, as Triton's tl.philox: key
    (seed low word, seed high word), round constants of Salmon et al. (2011)."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(rounds):
        product_b, product_a = c2 * _ROUND_B, c0 * _ROUND_A  # < 2**64: exact in uint64
        c0, c1, c2, c3 = ((product_b >> _SHIFT32) ^ c1 ^ np.uint64(k0), product_b & _LOW32,
                          (product_a >> _SHIFT32) ^ c3 ^ np.uint64(k1), product_a & _LOW32)
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _counters(keys: RandomKeys, elements: int, stream: int, first: int = 0):
    """Broadcast (element, request, position, stream) counters -> four [B, elements] arrays,
    elements first .. first + elements - 1."""
    batch = len(keys)
    as_u64 = lambda t: t.detach().cpu().numpy().astype(np.uint64) & _LOW32  # noqa: E731
    element = np.broadcast_to(np.arange(first, first + elements, dtype=np.uint64),
                              (batch, elements))
    request = np.broadcast_to(as_u64(keys.request_ids)[:, None], (batch, elements))
    position = np.broadcast_to(as_u64(keys.positions)[:, None], (batch, elements))
    return element, request, position, np.full((batch, elements), stream, dtype=np.uint64)


def uniforms(keys: RandomKeys, count: int, stream: int = ACCEPT) -> torch.Tensor:
    """-> float64 [B, count] in [0, 1), element i of row b from counter (i, request, position,
    stream)."""
    w0, w1, _, _ = philox4x32(keys.seed, *_counters(keys, count, stream))
    mantissa = ((w0 >> np.uint64(5)) << np.uint64(26)) | (w1 >> np.uint64(6))
    values = mantissa.astype(np.float64) * 2.0**-53
    return torch.from_numpy(values).to(keys.device)


def exponentials(keys: RandomKeys, count: int, stream: int, start: int = 0) -> torch.Tensor:
    """-> float64 [B, count] of Exp(1) draws for elements start .. start + count - 1 (a
    vocabulary shard's columns), element e from word e % 4 of counter (e // 4, request,
    position, stream)."""
    first, stop = start // 4, -(-(start + count) // 4)
    words = philox4x32(keys.seed, *_counters(keys, stop - first, stream, first))
    interleaved = np.stack(words, axis=-1).reshape(len(keys), -1)
    interleaved = interleaved[:, start - 4 * first:start - 4 * first + count]
    values = -np.log((interleaved.astype(np.float64) + 0.5) * 2.0**-32)
    return torch.from_numpy(values).to(keys.device)


def draw_keys(batch: int, generator: torch.Generator | None = None) -> RandomKeys:
    """Keys for a one-off batch (requests 0..B-1 at position 0), the seed from `generator`."""
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    return RandomKeys.of(seed, range(batch), [0] * batch)
