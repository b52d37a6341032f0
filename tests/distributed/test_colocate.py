"""The colocated verifier: a hook-free view over the learner's unsharded parameters gives the
plain model's logits and greedy rollouts, for FSDP2, TP and EP layouts; after the phase the
learner is sharded again."""

import pytest
import torch

from tests.helpers import build_learner, run_function

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]


def _view_vs_plain(rank, world_size, flavor, parallelism):
    from titan_spec.models import build_model
    from titan_spec.parallel.verifier import colocated_verifier
    from titan_spec.rollout.engine import RolloutEngine
    from titan_spec.rollout.sampling import SamplingParams

    model, dims, spec = build_learner(flavor, parallelism, world_size)
    plain = build_model("qwen3", flavor, seed=3).eval()
    tokens = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    prompts = [[1, 5, 9, 13], [1, 7], [1, 20, 21, 22, 23, 24]]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    with torch.no_grad():
        expected = plain(tokens)
        expected_rollout = RolloutEngine(plain, max_batch_size=2, max_seq_len=64).generate(
            prompts, greedy)
        with colocated_verifier(model, dims, spec.builder) as view:
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                        for m in view.modules())
            logits = view(tokens)
            rollout = RolloutEngine(view, max_batch_size=2, max_seq_len=64).generate(
                prompts, greedy)
    resharded = model.layers["0"].attention.wq.weight
    return {"max_diff": (logits - expected).abs().max().item(), "hooks": hooks,
            "same_rollout": [c.token_ids for c in rollout] == [c.token_ids
                                                               for c in expected_rollout],
            "local_rows": resharded.to_local().shape[0], "full_rows": resharded.shape[0]}


@pytest.mark.parametrize("flavor, parallelism", [
    ("debug", {"dp_shard": 2}),
    ("debug", {"dp_shard": 1, "tp": 2}),
    ("debug_moe", {"dp_shard": 2, "ep": 2}),
], ids=["fsdp2", "tp2", "ep2"])
def test_view_matches_plain_model(flavor, parallelism, tmp_path):
    result = run_function(2, _view_vs_plain, tmp_path, flavor, parallelism)
    assert result["max_diff"] < 1e-5
    assert result["hooks"] == 0
    assert result["same_rollout"]
    assert result["local_rows"] * 2 == result["full_rows"]  # sharded again after the phase
