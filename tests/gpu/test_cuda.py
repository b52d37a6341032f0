"""CUDA paths that CPU tests can only stand in for: the Triton rejection sampler compiled for the
device at the Qwen3 vocabulary, the data / control planes under NCCL, FP8 GEMMs on the
device's own torch._scaled_mm."""

import os

import pytest
import torch

from bench.gpu_check import _kernel_case, fp8


@pytest.mark.parametrize("rule", ["token", "block"])
@pytest.mark.parametrize("batch, k", [(1, 1), (64, 4)])
def test_triton_equals_reference_on_cuda(rule, batch, k):
    assert _kernel_case(batch, k, 151936, rule, True, torch.device("cuda"), batch + k)
    assert _kernel_case(batch, k, 151936, rule, False, torch.device("cuda"), batch + k + 1)


def test_planes_under_nccl():
    import torch.distributed as dist

    from titan_spec import comm

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    device = torch.device("cuda", 0)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        comm.configure(device)
        assert float(comm.all_reduce(torch.ones(1, device=device))) == 1.0
        with pytest.raises(comm.CommPlaneError, match="data plane"):
            comm.all_reduce(torch.ones(1))  # a host tensor handed to NCCL
        control = comm.new_group([0], comm.CONTROL)
        assert float(comm.all_reduce(torch.ones(1), group=control)) == 1.0
        with pytest.raises(comm.CommPlaneError, match="control plane"):
            comm.all_reduce(torch.ones(1, device=device), group=control)
    finally:
        dist.destroy_process_group()
        comm.configure(None)


def test_fp8_emulation_equals_scaled_mm_on_cuda():
    result = fp8(torch.device("cuda"), None)
    assert result["ok"], result


def test_weight_sync_checksums_stay_on_the_device_and_agree_with_the_host_sum():
    from titan_spec.parallel.weight_sync import checksum, device_checksum

    bucket = torch.randint(0, 256, ((3 << 20) + 3,), dtype=torch.uint8)
    on_device = checksum(bucket.cuda())
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), device_checksum(bucket))
