"""Adaptive speculation: choose k (0 = plain decoding) each iteration to maximise expected
tokens per second.

Expected tokens per sequence for k drafts, with a_i the running acceptance rate of draft
position i given all earlier ones were accepted: E(k) = 1 + a_0 + a_0 a_1 + ... (k terms).
Iteration time T(B, k) is measured (EMA) per batch-size bucket, because verifying k+1 positions
is nearly free at small batches and costs ~(k+1)x a decode step once the batch makes the target
compute-bound. Exploration is cheap because it has to be (continuous batching walks through
every bucket as the batch drains): a new bucket measures k = 0 and one k > 0 (the best k of the
nearest measured bucket, at least 1, so a drafter already turned off elsewhere is only probed
with one draft), and T for other k comes from a straight line through the measured points; a
chosen k is measured as it runs, and one iteration in `explore_every` re-tries a neighbour of
the best, so estimates keep up."""

from __future__ import annotations


class AdaptiveK:
    def __init__(self, max_k: int, explore_every: int = 32, decay: float = 0.9):
        if max_k < 0:
            raise ValueError(f"max_k={max_k} must be >= 0.")
        self.max_k, self.explore_every, self.decay = max_k, explore_every, decay
        self.step_time: dict[tuple[int, int], float] = {}
        self.accepted = [0.0] * max_k
        self.drafted = [0.0] * max_k
        self.iterations = 0
        self.chosen: list[int] = []  # history of choices (for stats and tests)

    @staticmethod
    def bucket(batch_size: int) -> int:
        return batch_size.bit_length()  # 1, 2-3, 4-7, 8-15, ...

    def acceptance(self, position: int) -> float:
        if self.drafted[position] > 0:
            return self.accepted[position] / self.drafted[position]
        # Unseen deeper positions: assume they behave like the deepest observed one.
        return self.acceptance(position - 1) if position > 0 else 0.5

    def expected_tokens(self, k: int) -> float:
        total, reach = 1.0, 1.0
        for position in range(k):
            reach *= self.acceptance(position)
            total += reach
        return total

    def _measured(self, bucket: int) -> dict[int, float]:
        return {k: t for (b, k), t in self.step_time.items() if b == bucket}

    def estimated_time(self, bucket: int, k: int) -> float:
        points = self._measured(bucket)
        if k in points:
            return points[k]
        ks, times = list(points), list(points.values())
        mean_k, mean_t = sum(ks) / len(ks), sum(times) / len(times)
        spread = sum((x - mean_k) ** 2 for x in ks)
        slope = sum((x - mean_k) * (t - mean_t) for x, t in zip(ks, times, strict=True)) / spread
        return max(mean_t + slope * (k - mean_k), 1e-9)

    def _best(self, bucket: int) -> int:
        return max(range(self.max_k + 1),
                   key=lambda k: self.expected_tokens(k) / self.estimated_time(bucket, k))

    def _nearest_best(self, bucket: int) -> int:
        """Best k of the closest bucket with two measured ks (max_k when there is none)."""
        ready = {b for (b, _) in self.step_time if len(self._measured(b)) >= 2}
        if not ready:
            return self.max_k
        return self._best(min(ready, key=lambda b: abs(b - bucket)))

    def choose(self, batch_size: int) -> int:
        self.iterations += 1
        bucket = self.bucket(batch_size)
        measured = self._measured(bucket)
        if 0 not in measured:
            return self._record(0)
        if len(measured) == 1:
            return self._record(max(1, self._nearest_best(bucket)))
        best = self._best(bucket)
        if self.iterations % self.explore_every == 0:
            neighbour = best + 1 if (self.iterations // self.explore_every) % 2 else best - 1
            if 0 <= neighbour <= self.max_k:
                return self._record(neighbour)
        return self._record(best)

    def plain_time(self, batch_size: int) -> float | None:
        """The measured time of a k = 0 (plain decoding) iteration at this batch size."""
        return self.step_time.get((self.bucket(batch_size), 0))

    def _record(self, k: int) -> int:
        self.chosen.append(k)
        return k

    def observe(self, batch_size: int, k: int, draft_s: float, verify_s: float,
                emitted_rows: list[list[int]], drafted: list[int] | None = None) -> None:
        """drafted: each row's draft length when sequences draft fewer than k."""
        key = (self.bucket(batch_size), k)
        elapsed = draft_s + verify_s
        old = self.step_time.get(key)
        smoothed = elapsed if old is None else self.decay * old + (1 - self.decay) * elapsed
        self.step_time[key] = smoothed
        for position in range(k):
            self.accepted[position] *= self.decay
            self.drafted[position] *= self.decay
        for index, row in enumerate(emitted_rows):
            accepted = next((i for i, t in enumerate(row) if t < 0), k + 1) - 1
            length = drafted[index] if drafted is not None else k
            for position in range(min(length, accepted + 1)):
                self.drafted[position] += 1
                self.accepted[position] += float(position < accepted)
