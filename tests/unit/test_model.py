import pytest
import torch

from titan_spec.models import build_model, get_model_spec
from titan_spec.models.qwen3.moe import MoE
from titan_spec.rollout.kv_cache import KVCache


@pytest.fixture(scope="module", params=["debug", "debug_moe"])
def model(request):
    return build_model("qwen3", request.param, seed=1).eval()


def test_kv_cache_decode_equals_full_forward(model):
    tokens = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.for_model(model, batch_size=3, max_seq_len=32)
        steps = [model(tokens[:, t:t + 1], torch.full((3, 1), t), kv_cache=cache)
                 for t in range(tokens.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-5)


def test_query_block_at_per_sequence_offsets(model):
    """The verifier scores k+1 new tokens per sequence, each sequence at its own offset."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 20))
    offsets, block = [5, 11], 5
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.for_model(model, batch_size=2, max_seq_len=32)
        # Prefill each sequence to its own offset, plus stale junk past it that must be ignored.
        model(tokens[:, :12], torch.arange(12).expand(2, 12), kv_cache=cache)
        positions = torch.stack([torch.arange(o, o + block) for o in offsets])
        query = torch.gather(tokens, 1, positions)
        out = model(query, positions, kv_cache=cache)
    for row, offset in enumerate(offsets):
        torch.testing.assert_close(out[row], full[row, offset:offset + block], atol=2e-5,
                                   rtol=1e-5)


def test_moe_matches_slow_per_token_loop():
    torch.manual_seed(0)
    moe = MoE(dim=16, hidden_dim=8, num_experts=4, top_k=2, norm_topk=True)
    for weight in (moe.experts.w1, moe.experts.w2, moe.experts.w3):
        torch.nn.init.normal_(weight, std=0.3)
    x = torch.randn(2, 7, 16)
    out = moe(x)
    probs = torch.softmax(moe.router(x.reshape(-1, 16)), dim=-1)
    expected = torch.zeros(14, 16)
    for t, token in enumerate(x.reshape(-1, 16)):
        top = probs[t].topk(2)
        gates = top.values / top.values.sum()
        for gate, e in zip(gates, top.indices, strict=True):
            gated = torch.nn.functional.silu(token @ moe.experts.w1[e])
            hidden = gated * (token @ moe.experts.w3[e])
            expected[t] += gate * (hidden @ moe.experts.w2[e])
    torch.testing.assert_close(out.reshape(-1, 16), expected, atol=1e-5, rtol=1e-5)


def test_moe_aux_loss_is_one_when_balanced():
    moe = MoE(dim=4, hidden_dim=4, num_experts=4, top_k=1, norm_topk=True)
    probs = torch.full((8, 4), 0.25)
    ids = torch.arange(8).remainder(4).unsqueeze(1)
    assert moe.load_balance_loss(ids, probs).item() == pytest.approx(1.0)
    skewed = torch.zeros(8, 1, dtype=torch.long)
    assert moe.load_balance_loss(skewed, probs).item() == pytest.approx(1.0)
    peaked = torch.tensor([[1.0, 0, 0, 0]]).expand(8, 4)
    assert moe.load_balance_loss(skewed, peaked).item() == pytest.approx(4.0)


def test_init_depends_only_on_seed_and_name():
    a = build_model("qwen3", "debug", seed=3).state_dict()
    b = build_model("qwen3", "debug", seed=3).state_dict()
    c = build_model("qwen3", "debug", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])
    assert not torch.equal(a["layers.0.attention.wq.weight"], a["layers.1.attention.wq.weight"])


@pytest.mark.parametrize("flavor, total, active", [
    ("0.6B", 0.596e9, None), ("8B", 8.19e9, None),
    ("30B-A3B", 30.5e9, 3.3e9), ("235B-A22B", 235.1e9, 22.1e9),
])
def test_published_flavor_sizes(flavor, total, active):
    args = get_model_spec("qwen3").args(flavor)
    model = build_model("qwen3", flavor, device="meta")
    counted = sum(p.numel() for p in model.parameters())
    assert counted == args.num_params()
    assert counted == pytest.approx(total, rel=0.01)
    if active:
        assert args.num_active_params() == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize("flavor", ["debug", "debug_moe"])
def test_hf_adapter_round_trip(flavor):
    spec = get_model_spec("qwen3")
    model = build_model("qwen3", flavor)
    ours = model.state_dict()
    hf = spec.hf.to_hf(ours, model.args)
    assert any(k.startswith("model.layers.0.self_attn.q_proj") for k in hf)
    back = spec.hf.from_hf(hf, model.args)
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_hf_adapter_rejects_unknown_weight():
    spec = get_model_spec("qwen3")
    args = spec.args("debug")
    with pytest.raises(ValueError, match="unexpected Hugging Face weight"):
        spec.hf.from_hf({"model.layers.0.mlp.shared_expert.weight": torch.zeros(1)}, args)


def test_unknown_flavor_and_override():
    with pytest.raises(ValueError, match="Did you mean 'debug'"):
        build_model("qwen3", "debg")
    with pytest.raises(ValueError, match="unknown model override"):
        build_model("qwen3", "debug", n_layer=3)


def test_tied_embeddings_stay_tied_after_materialisation():
    model = build_model("qwen3", "debug", tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == model.args.num_params()


def test_float64_attention_changes_numerics_only():
    """attention_fp64 keeps float32 activations and the fp32 model's outputs (to fp32
    precision), with and without the KV cache."""
    plain = build_model("qwen3", "debug", seed=1).eval()
    upcast = build_model("qwen3", "debug", seed=1, attention_fp64=True).eval()
    assert upcast.layers["0"].attention.fp64 and not plain.layers["0"].attention.fp64
    tokens = torch.randint(3, 54, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = upcast(tokens)
        assert full.dtype == torch.float32
        torch.testing.assert_close(full, plain(tokens), rtol=1e-5, atol=1e-5)
        cache = KVCache.for_model(upcast, batch_size=2, max_seq_len=32)
        upcast(tokens[:, :25], kv_cache=cache.view(None, 25))
        block = upcast(tokens[:, 25:], torch.arange(25, 30).expand(2, 5),
                       kv_cache=cache.view(None, 30))
    torch.testing.assert_close(block, full[:, 25:], rtol=1e-5, atol=1e-5)
