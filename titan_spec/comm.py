"""Every collective and point-to-point call titan-spec makes goes through this module, on one of
two planes (DTensor's and FSDP2's own collectives stay inside torch, on the device):

- the data plane: the default group and the groups of the device meshes (NCCL on CUDA, gloo on
  CPU); its tensors live on the rank's device: weight buckets, TP / EP / DP reductions;
- the control plane: gloo groups; its tensors live on the host: headers, versions, the async
  queue's messages, the start point, the stop agreement, barriers. A wait on it blocks the
  host (an NCCL wait only orders a stream), and polling a posted receive costs no GPU time.

A call checks its tensors against its group's plane before it starts: a host tensor handed to
NCCL would fail deep in c10d ('No backend type associated with device type cpu'); here it fails
at once, naming the call site. TITAN_SPEC_COMM_LOG=PATH appends one JSON line per distinct
(rank, plane, op, device, call site) for the tests that check where a job's traffic goes.
Imports nothing from titan_spec: every part of the package may use it."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

CONTROL, DATA = "control", "data"
SUM, MAX, MIN = dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN


class CommPlaneError(RuntimeError):
    """A tensor on the wrong device for the plane of the group it was handed to."""


# device: where data-plane tensors must live (None until configure: not checked);
# control: gloo groups by id (the world's first); logged: the log lines already written.
_STATE: dict = {"device": None, "timeout": None, "world_control": None, "control": {},
                "logged": set()}


def configure(device: torch.device | None, timeout_s: float | None = None) -> None:
    """After init_process_group, on every rank (collective when the world has > 1 rank):
    the data plane's device, the job's collective timeout, the world's control group."""
    _STATE["device"] = torch.device(device) if device is not None else None
    _STATE["timeout"] = timedelta(seconds=timeout_s) if timeout_s else None
    _STATE["control"], _STATE["world_control"] = {}, None
    if dist.is_initialized() and dist.get_world_size() > 1:
        _STATE["world_control"] = new_group(list(range(dist.get_world_size())), CONTROL)


def set_data_device(device: torch.device) -> None:
    """Tests: a stand-in accelerator (e.g. meta) so that a host tensor on the data plane
    fails on CPU as it would under NCCL."""
    _STATE["device"] = torch.device(device)


def new_group(ranks: list[int], plane: str = DATA):
    """A group over `ranks` on `plane` with the job's timeout (new_group's own default is the
    backend's: 10 minutes for NCCL, shorter than waits a 235B job can have). Collective over
    the default group: every rank creates every group, in the same order."""
    backend = "gloo" if plane == CONTROL else None
    group = dist.new_group(ranks, timeout=_STATE["timeout"], backend=backend)
    if plane == CONTROL and group is not None:
        _STATE["control"][id(group)] = group
    return group


def apply_timeout(groups) -> None:
    """The job's timeout on groups made outside new_group: DeviceMesh's sub-groups take the
    backend's default (30 minutes for gloo, 10 for NCCL), not comm.timeout_s. Groups this rank
    is not in are skipped."""
    from torch.distributed.distributed_c10d import _rank_not_in_group, _set_pg_timeout

    if _STATE["timeout"] is None:
        return
    for group in groups:
        if group is not None and not _rank_not_in_group(group):
            _set_pg_timeout(_STATE["timeout"], group)


def control_group():
    """The world's control group (None in a one-rank job)."""
    return _STATE["world_control"]


def plane_of(group) -> str:
    return CONTROL if group is not None and id(group) in _STATE["control"] else DATA


def _check(op: str, tensors, group) -> None:
    plane, device = plane_of(group), _STATE["device"]
    for tensor in tensors:
        if plane == CONTROL and tensor.device.type != "cpu":
            raise CommPlaneError(f"{op} at {_caller()}: a {tensor.device} tensor on the control "
                                 "plane (gloo, host tensors); move it to the CPU or use a data "
                                 "group.")
        if plane == DATA and device is not None and tensor.device != device:
            raise CommPlaneError(f"{op} at {_caller()}: a {tensor.device} tensor on the data "
                                 f"plane, whose tensors live on {device} (NCCL on CUDA takes no "
                                 "host tensors); send host messages on a control group "
                                 "(titan_spec.comm.control_group).")
    _log(op, plane, tensors)


def _caller() -> str:
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}"


def _log(op: str, plane: str, tensors) -> None:
    path = os.environ.get("TITAN_SPEC_COMM_LOG")
    if not path:
        return
    rank = dist.get_rank() if dist.is_initialized() else 0
    devices = sorted({str(tensor.device) for tensor in tensors})
    record = {"rank": rank, "plane": plane, "op": op, "devices": devices, "caller": _caller(),
              "data_device": str(_STATE["device"])}
    key = json.dumps(record, sort_keys=True)
    if key not in _STATE["logged"]:
        _STATE["logged"].add(key)
        with open(path, "a") as f:  # one short line per write: O_APPEND keeps lines whole
            f.write(key + "\n")


# ------------------------------------------------------------------ the calls
def all_reduce(tensor: torch.Tensor, op=SUM, group=None) -> torch.Tensor:
    """In place; returns `tensor`."""
    _check("all_reduce", [tensor], group)
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def broadcast(tensor: torch.Tensor, src: int, group=None, async_op: bool = False):
    """src: a global rank. Returns the Work when async_op."""
    _check("broadcast", [tensor], group)
    return dist.broadcast(tensor, src=src, group=group, async_op=async_op)


def isend(tensor: torch.Tensor, dst: int, group=None):
    _check("isend", [tensor], group)
    return dist.isend(tensor, dst, group=group)


def recv(tensor: torch.Tensor, src: int, group=None) -> None:
    _check("recv", [tensor], group)
    dist.recv(tensor, src, group=group)


def all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor, group=None) -> None:
    _check("all_gather", [tensor, *outputs], group)
    dist.all_gather(outputs, tensor, group=group)


def all_to_all_single(output: torch.Tensor, tensor: torch.Tensor, output_splits=None,
                      input_splits=None, group=None) -> None:
    _check("all_to_all_single", [output, tensor], group)
    dist.all_to_all_single(output, tensor, output_splits, input_splits, group=group)


def barrier(group=None) -> None:
    """On the control plane: a host barrier (the world's when group is None)."""
    if not dist.is_initialized():
        return
    group = group if group is not None else control_group()
    _check("barrier", [], group)
    dist.barrier(group=group)


def broadcast_json(value, src: int, group=None):
    """`value` (JSON-able: src's argument, ignored elsewhere) on every rank of the control
    group `group`: what a rank receives is data, never pickled code."""
    payload = None
    if dist.get_rank() == src:
        payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
    size = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64)
    broadcast(size, src, group)
    if payload is None:
        payload = torch.empty(int(size), dtype=torch.uint8)
    broadcast(payload, src, group)
    return json.loads(payload.numpy().tobytes().decode())


def wait_on_host(work, tensor: torch.Tensor) -> None:
    """Block the host until `work` is done: on CUDA, Work.wait() only makes the current stream
    wait, so a bound enforced with it alone (the staging bound, the bounded queue) holds the
    stream back, not the host."""
    work.wait()
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


# ------------------------------------------------------------------ over data-parallel ranks
def all_reduce_dp(dims, value: torch.Tensor, op=SUM) -> torch.Tensor:
    """In place over the dp group of a ParallelDims (when there is one); returns `value`."""
    group = dims.dp_group()
    if group is not None:
        all_reduce(value, op=op, group=group)
    return value


def dp_sum(dims, values: list[float], device) -> list[float]:
    """Sums of a list of numbers over the dp ranks, in float64."""
    return all_reduce_dp(dims, torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def dp_max(dims, values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    return all_reduce_dp(dims, tensor, op=MAX).tolist()
