"""Generation time of one RL step on one rollout replica: prefill, then decode iterations of
verify width k + 1 (1 without speculation) while the batch shrinks as responses end.

Each of the replica's decode slots ("lanes") takes its sequences one after another; a
sequence needs response_length / acceptance_length iterations. An iteration costs the target's
forward over the active lanes (`costs.forward_s`) plus k draft steps, and the profile's fixed
per-iteration cost. When every sequence has its own slot, all start together and the context
of each at iteration j is prompt + j * acceptance_length exactly; when slots take several
sequences in turn, the context is the length-biased mean position (E[len^2] / 2 E[len])."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from tools.simulate.costs import Shape, forward_s
from tools.simulate.hardware import Hardware


@dataclass(frozen=True)
class Drafter:
    k: int  # draft tokens per iteration (0: plain decoding)
    acceptance_length: float  # mean tokens a sequence gains per iteration (bonus included)
    shape: Shape | None  # what one draft step reads and computes (None: nothing on device)


def response_lengths(count: int, mean: float, sigma: float, maximum: int) -> np.ndarray:
    """`count` response lengths at the quantiles of a log-normal of this mean and shape sigma,
    cut at `maximum` (max_new_tokens): the long tail of reasoning rollouts, deterministic."""
    quantiles = (np.arange(count) + 0.5) / count
    normal = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    mu = np.log(mean) - sigma * sigma / 2.0
    return np.clip(np.exp(mu + sigma * normal), 1.0, float(maximum))


def in_flight_position(lengths: np.ndarray, prompt_len: float) -> float:
    """Mean context of a sequence in flight when slots take sequences in turn: the prompt and
    the length-biased mean position E[len^2] / (2 E[len])."""
    return prompt_len + float(np.mean(lengths ** 2) / (2 * np.mean(lengths)))


def _lanes(lengths: np.ndarray, slots: int) -> list[np.ndarray]:
    """Deal the sequences onto the slots in a fixed shuffled order (a sorted deal would put all
    long ones on one slot)."""
    order = np.random.default_rng(0).permutation(len(lengths))
    return [lengths[order[i::slots]] for i in range(slots)]


def decode_s(lengths: np.ndarray, *, slots: int, prompt_len: float, drafter: Drafter,
             target: Shape, hw: Hardware, tp: int, dtype_bytes: float) -> dict:
    """Decode seconds of one replica for these response lengths, and the time-weighted mean
    batch (how full the replica was)."""
    gain = drafter.acceptance_length if drafter.k else 1.0
    width = drafter.k + 1 if drafter.k else 1
    slots = max(1, min(slots, len(lengths)))
    lanes = _lanes(lengths, slots)
    lane_iters = np.array([np.sum(np.ceil(lane / gain)) for lane in lanes])
    one_each = all(len(lane) == 1 for lane in lanes)
    longest = int(lane_iters.max())
    j = np.arange(longest)
    active = (lane_iters[None, :] > j[:, None]).sum(axis=1).astype(float)
    if one_each:
        position = prompt_len + j * gain
    else:
        position = in_flight_position(lengths, prompt_len)
    kv_tokens = active * position
    # One roofline per iteration, as numpy arrays over j.
    seconds = _iteration_seconds(active, kv_tokens, width, drafter, target, hw, tp, dtype_bytes)
    total = float(seconds.sum())
    mean_batch = float((active * seconds).sum() / total) if total else 0.0
    return {"decode_s": total, "iterations": longest, "mean_batch": mean_batch}


def _iteration_seconds(active, kv_tokens, width, drafter, target, hw, tp, dtype_bytes):
    step = forward_s(target, hw, tp=tp, sequences=active, width=width, kv_tokens=kv_tokens,
                     dtype_bytes=dtype_bytes) + hw.iter_overhead_s
    if drafter.k:
        step = step + draft_steps_s(drafter, hw, tp=tp, batch=active, kv_tokens=kv_tokens,
                                    dtype_bytes=dtype_bytes)
    return step


def draft_steps_s(drafter: Drafter, hw: Hardware, *, tp: int, batch: float, kv_tokens: float,
                  dtype_bytes: float) -> float:
    """The k draft steps of one iteration (an n-gram lookup: one host step, no device work)."""
    if drafter.shape is None:
        return hw.draft_step_overhead_s
    one = forward_s(drafter.shape, hw, tp=tp, sequences=batch, width=1, kv_tokens=kv_tokens,
                    dtype_bytes=dtype_bytes)
    return drafter.k * (one + hw.draft_step_overhead_s)
