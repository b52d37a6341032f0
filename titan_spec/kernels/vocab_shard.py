"""The vocabulary columns one rank's logits hold, and every reduction along the vocabulary that
the sampling transform (rollout/sampling.py) and the rejection rules (rejection_reference.py)
need: maximum, sum, the value at a global token id, argmax, k-th largest.

Under tensor parallelism the LM head's rows are split over the tp ranks, so each rank's logits
hold the columns [start, stop) of every row. Each reduction is exact, so the sharded transform
and rules give the single-rank results bit for bit: a maximum and an argmax (first index among
ties) do not depend on the order of the shards; sums are of integers (fixed point, `to_units`),
or of one non-zero term and zeros. A whole shard (`group=None`) holds every column and reduces
nothing, so the single-rank code path is the same code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from titan_spec import comm

UNIT = 2.0**40  # fixed point of probability masses: exact sums in any order (vocab < 2**23)
_NO_ID = torch.iinfo(torch.long).max


def to_units(values: torch.Tensor) -> torch.Tensor:
    """Non-negative masses in [0, 1] -> int64 multiples of 2**-40 (rounded to nearest)."""
    return (values.double() * UNIT).round().long()


@dataclass(frozen=True)
class VocabShard:
    start: int  # first global token id held here
    stop: int  # one past the last
    group: object = None  # the ranks holding the other columns; None: this rank holds all

    def __post_init__(self):
        if not 0 <= self.start < self.stop:
            raise ValueError(f"a vocabulary shard needs 0 <= start < stop, got "
                             f"[{self.start}, {self.stop}).")

    @classmethod
    def whole(cls, vocab_size: int) -> "VocabShard":
        return cls(0, vocab_size)

    @classmethod
    def of_rank(cls, vocab_size: int, rank: int, world: int, group) -> "VocabShard":
        """Rank `rank`'s even share of [0, vocab_size) (the last share may be shorter)."""
        per_rank = -(-vocab_size // world)
        start = rank * per_rank
        if start >= vocab_size:
            raise ValueError(f"vocab_size={vocab_size} leaves tp rank {rank} of {world} no "
                             f"columns; use a tp degree <= {-(-vocab_size // per_rank)}.")
        return cls(start, min(start + per_rank, vocab_size), group if world > 1 else None)

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def is_whole(self) -> bool:
        return self.group is None

    # ---------------------------------------------------------------- reductions
    def _reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        if self.group is not None:
            comm.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def total(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum over the shards of each shard's partial sum (pass integers for exactness)."""
        return self._reduce(partial, dist.ReduceOp.SUM)

    def maximum(self, partial: torch.Tensor) -> torch.Tensor:
        return self._reduce(partial, dist.ReduceOp.MAX)

    def column_ids(self, device) -> torch.Tensor:
        return torch.arange(self.start, self.stop, device=device)

    def at(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """values [..., size] (this shard's columns), ids [...] global -> values[..., ids]: the
        owning shard's value, zero elsewhere, summed (exact: one term is non-zero)."""
        inside = (ids >= self.start) & (ids < self.stop)
        local = (ids - self.start).clamp(0, self.size - 1)
        picked = values.gather(-1, local.unsqueeze(-1)).squeeze(-1)
        return self.total(torch.where(inside, picked, torch.zeros_like(picked)))

    def one_hot(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """1 at each row's global id `ids` [...] within this shard's columns, shaped like `like`."""
        inside = ((ids >= self.start) & (ids < self.stop)).unsqueeze(-1)
        local = (ids - self.start).clamp(0, self.size - 1).unsqueeze(-1)
        return torch.zeros_like(like).scatter_(-1, local, inside.to(like.dtype))

    def argmax(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (the largest score, its global id: the first among ties) per row of scores
        [..., size]."""
        local_ids = scores.argmax(dim=-1)
        local_best = scores.gather(-1, local_ids.unsqueeze(-1)).squeeze(-1)
        if self.group is None:
            return local_best, local_ids
        best = self.maximum(local_best.clone())
        candidate = torch.where(local_best == best, local_ids + self.start,
                                torch.full_like(local_ids, _NO_ID))
        return best, self._reduce(candidate, dist.ReduceOp.MIN)

    def kth_largest(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th largest of each row of values [..., size] over all shards -> [..., 1]."""
        if self.group is None:
            return values.topk(k, dim=-1).values[..., -1:]
        local = values.topk(min(k, self.size), dim=-1).values
        if local.shape[-1] < k:  # pad so that every shard sends k candidates
            pad = local.new_full((*local.shape[:-1], k - local.shape[-1]), float("-inf"))
            local = torch.cat([local, pad], dim=-1)
        world = dist.get_world_size(self.group)
        gathered = [torch.empty_like(local) for _ in range(world)]
        comm.all_gather(gathered, local.contiguous(), group=self.group)
        return torch.cat(gathered, dim=-1).topk(k, dim=-1).values[..., -1:]
