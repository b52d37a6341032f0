"""The launcher's multi-node flags and the verdict a Slurm job script requeues on."""

import json

import pytest

from titan_spec.launch import PREEMPTED_EXIT, rendezvous_argv, verdict


def test_one_node_is_standalone_and_several_use_c10d_on_the_head_node():
    assert rendezvous_argv(1, None, None) == ["--standalone"]
    assert rendezvous_argv(2, "10.0.0.1:29501", "77-0") == [
        "--nnodes", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "10.0.0.1:29501",
        "--rdzv_id", "77-0"]


@pytest.mark.parametrize("endpoint, rdzv_id, message", [
    (None, "77-0", "needs --rdzv-endpoint"), ("10.0.0.1:29501", None, "needs --rdzv-endpoint"),
    ("10.0.0.1", "77-0", "is not HOST:PORT"), (":29501", "77-0", "is not HOST:PORT")])
def test_several_nodes_without_a_usable_rendezvous_are_refused(endpoint, rdzv_id, message):
    with pytest.raises(ValueError, match=message):
        rendezvous_argv(2, endpoint, rdzv_id)


def test_the_verdict_is_that_of_this_run_only(tmp_path):
    assert verdict(str(tmp_path), "5-0") == 1  # nothing written yet
    (tmp_path / "status.json").write_text(json.dumps({"state": "preempted", "run_id": "5-0"}))
    assert verdict(str(tmp_path), "5-0") == PREEMPTED_EXIT
    assert verdict(str(tmp_path), "5-1") == 1  # the status of the attempt before a requeue
    (tmp_path / "status.json").write_text(json.dumps({"state": "done", "run_id": "5-1"}))
    assert verdict(str(tmp_path), "5-1") == 0
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed", "run_id": "5-1"}))
    assert verdict(str(tmp_path), "5-1") == 1
