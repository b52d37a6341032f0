"""Communication that works on NCCL (titan_spec/comm.py): host messages on the control plane
(gloo), bulk tensors on the rank's device. On CPU the device is the host too, so the tests
make the rule bite two ways: a stand-in accelerator (`meta`) for the data plane, under which
every control-plane piece of an async job must still work and a host message on the data plane
fails as it would under NCCL; and a log of where a real job's calls went (sync and async
jobs), which must show each control message on the control plane."""

import pytest
import torch

from tests.helpers import run_function


def test_host_tensor_on_the_data_plane_names_the_call_site():
    from titan_spec import comm

    comm.set_data_device(torch.device("meta"))  # a stand-in accelerator
    try:
        with pytest.raises(comm.CommPlaneError, match="cpu tensor on the data plane.*meta"):
            comm.all_reduce(torch.zeros(1))
        with pytest.raises(comm.CommPlaneError, match="test_comm_planes"):
            comm.broadcast(torch.zeros(1), 0)
    finally:
        comm.configure(None)


def _control_pieces(rank, world_size, queue_on_data_plane):
    """The async job's control traffic with the data plane's device set to `meta`: any host
    tensor that strays onto the data plane raises, as a CPU tensor on NCCL would."""
    import torch.distributed as dist

    from titan_spec import comm
    from titan_spec.components import stop_signal
    from titan_spec.rl.async_rl.queue import RolloutBatchMessage, RolloutQueue
    from titan_spec.rl.async_rl.schedule import share_start_point

    comm.set_data_device(torch.device("meta"))
    # The job's layout: learner rank 0, one rollout replica led by rank 1.
    group = dist.group.WORLD if queue_on_data_plane else None  # None: the control plane
    queue = RolloutQueue(capacity=2, replica_leaders=[1], group=group)
    try:
        point = share_start_point(5, 2) if rank == 0 else share_start_point()
        stopping = stop_signal.agreed()
        if rank == 1:
            queue.put(RolloutBatchMessage(3, 2, 0, [[1]], [[4, 5]], [[-0.5]], [1.0]))
            queue.drain()
            return {"point": point, "stopping": stopping}
        return {"point": point, "stopping": stopping, "taken": queue.take()[0].token_ids}
    except comm.CommPlaneError as err:
        return {"error": str(err)}
    finally:
        comm.set_data_device(torch.device("cpu"))


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_async_control_messages_stay_off_the_data_plane(tmp_path):
    result = run_function(2, _control_pieces, tmp_path, False)
    assert result == {"point": (5, 2), "stopping": False, "taken": [[4, 5]]}
    # The queue as it was first written (messages on the default group, NCCL on CUDA) fails.
    result = run_function(2, _control_pieces, tmp_path, True)
    assert "queue.recv_message" in result["error"] and "data plane" in result["error"]


def _mesh_timeouts(rank, world_size):
    from titan_spec import comm
    from titan_spec.parallel.parallel_dims import ParallelDims

    comm.configure(torch.device("cpu"), timeout_s=123)
    dims = ParallelDims(1, 2, 1, 1, world_size)
    dims.build_meshes("cpu")
    return sorted({group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
                   for group in dims._mesh_groups()})


def test_device_mesh_groups_take_the_jobs_timeout(tmp_path):
    """DeviceMesh makes its own sub-groups with the backend's default (gloo: 30 minutes), not
    comm.timeout_s: a hang inside FSDP2 / TP collectives would outlast the stated bound."""
    assert run_function(2, _mesh_timeouts, tmp_path) == [123.0]
