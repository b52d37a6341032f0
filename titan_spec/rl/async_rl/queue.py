"""The bounded queue between the rollout replicas and the learner (DESIGN.md's rl/buffer.py).

Each replica's leader sends its finished batch to learner rank 0 as a non-blocking point-to-
point message and keeps at most `capacity` (= max_policy_lag + 1) of them in flight: a replica
that is that far ahead waits for the learner to take one. Learner rank 0 takes one message per
replica each step and shares them with the other learner ranks. Everything travels on the
control plane (host tensors over gloo, titan_spec/comm.py): a wait there blocks the host, so the
bound holds a replica back, not only its stream."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from titan_spec import comm


@dataclass
class RolloutBatchMessage:
    """What a rollout replica sends for one step."""

    step: int
    policy_version: int
    drafter_version: int
    prompts: list
    token_ids: list
    logprobs: list
    rewards: list
    stats: dict = field(default_factory=dict)


# Messages travel as JSON, never pickle: what a rank receives is data, not code to run.
def _encode(messages: list[RolloutBatchMessage]) -> torch.Tensor:
    text = json.dumps([asdict(m) for m in messages])
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)


def _decode(payload: torch.Tensor) -> list[RolloutBatchMessage]:
    return [RolloutBatchMessage(**m) for m in json.loads(payload.numpy().tobytes().decode())]


def send_message(message: RolloutBatchMessage, dst: int, group) -> list:
    """Non-blocking send over `group` (one holding both ranks): [(work, tensor), ...] to wait
    on later."""
    payload = _encode([message])
    size = torch.tensor([payload.numel()], dtype=torch.int64)
    return [(comm.isend(size, dst, group), size), (comm.isend(payload, dst, group), payload)]


def recv_message(src: int, group) -> RolloutBatchMessage:
    size = torch.empty(1, dtype=torch.int64)
    comm.recv(size, src, group)
    payload = torch.empty(int(size), dtype=torch.uint8)
    comm.recv(payload, src, group)
    return _decode(payload)[0]


def broadcast_messages(messages: list | None, group) -> list[RolloutBatchMessage]:
    """Rank 0's messages on every rank of `group` (rank 0's argument; None elsewhere)."""
    rows = comm.broadcast_json([asdict(m) for m in messages] if messages is not None else None,
                               0, group)
    return [RolloutBatchMessage(**row) for row in rows]


class RolloutQueue:
    def __init__(self, capacity: int, replica_leaders: list[int], learner_group=None,
                 learner_world: int = 1, group=None):
        """learner_group: the learner ranks' control group; group: one over the whole job
        (default: the world's control group)."""
        self.capacity, self.replica_leaders = capacity, replica_leaders
        self.learner_group, self.learner_world = learner_group, learner_world
        self.group = group if group is not None else comm.control_group()
        self.in_flight: list = []  # a replica leader's unfinished sends, oldest first

    # ------------------------------------------------------------ rollout side (leaders)
    def put(self, message: RolloutBatchMessage) -> None:
        # Earlier batches the learner has not taken yet: the queue this one joins.
        message.stats["queue_depth"] = sum(
            not all(work.is_completed() for work, _ in sends) for sends in self.in_flight)
        self.in_flight.append(send_message(message, 0, self.group))
        while len(self.in_flight) > self.capacity:
            for work, tensor in self.in_flight.pop(0):
                comm.wait_on_host(work, tensor)

    def drain(self) -> None:
        """Wait until the learner has taken every batch sent."""
        for sends in self.in_flight:
            for work, tensor in sends:
                comm.wait_on_host(work, tensor)
        self.in_flight = []

    # ------------------------------------------------------------ learner side
    def take(self) -> list[RolloutBatchMessage]:
        """One message per replica, on every learner rank (collective over the learner)."""
        messages = None
        if dist.get_rank() == 0:
            messages = [recv_message(leader, self.group) for leader in self.replica_leaders]
        if self.learner_world > 1:
            messages = broadcast_messages(messages, self.learner_group)
        return messages
