"""EAGLE-3: the public HF layout (a head written as SpecForge / vLLM name its tensors loads, and
its logits equal an independent forward of that architecture), bit-equal round trips, clear
errors for broken folders, the reduced vocabulary mapped exactly, training-time test equal to
the drafting chain, greedy identity and exact sequence distributions through the engine."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.exact import PROMPTS, exact_sequence_probs, outcome_samples
from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.drafters import build_drafter
from titan_spec.drafters.ttt import ttt_outputs
from titan_spec.formats.eagle3_hf import load_eagle3_head, save_eagle3_head
from titan_spec.formats.safetensors_folder import WeightsError
from titan_spec.models import build_model
from titan_spec.models.eagle3 import build_eagle3_head, default_aux_layers, set_draft_vocab
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.kv_cache import KVCache
from titan_spec.rollout.sampling import SamplingParams

DRAFT_VOCAB = torch.tensor([0, 1, 3, 4, 7, 9, 12, 20, 33, 40, 41, 50, 63])


@pytest.fixture(scope="module")
def target():
    return build_model("qwen3", "debug", seed=0).eval()


def _head(target, seed=3, vocab=DRAFT_VOCAB):
    head = build_eagle3_head(target.args, seed=seed, draft_vocab_size=len(vocab))
    set_draft_vocab(head, vocab)
    return head.eval()


def _public_folder(path, target, gen):
    """An EAGLE-3 head as a published one looks: config.json + model.safetensors, written
    here by hand (not by our writer), draft vocabulary of 13 of the 64 target ids."""
    dim, kv, hidden = target.args.dim, target.args.n_kv_heads * 32, 96
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.05  # noqa: E731
    tensors = {
        "fc.weight": rand(dim, 3 * dim), "norm.weight": 1 + rand(dim),
        "lm_head.weight": rand(len(DRAFT_VOCAB), dim),
        "d2t": DRAFT_VOCAB - torch.arange(len(DRAFT_VOCAB)),
        "t2d": torch.zeros(64, dtype=torch.bool).index_fill(0, DRAFT_VOCAB, True),
        "midlayer.hidden_norm.weight": 1 + rand(dim),
        "midlayer.input_layernorm.weight": 1 + rand(dim),
        "midlayer.post_attention_layernorm.weight": 1 + rand(dim),
        "midlayer.self_attn.q_proj.weight": rand(4 * 32, 2 * dim),
        "midlayer.self_attn.k_proj.weight": rand(kv, 2 * dim),
        "midlayer.self_attn.v_proj.weight": rand(kv, 2 * dim),
        "midlayer.self_attn.o_proj.weight": rand(dim, 4 * 32),
        "midlayer.mlp.gate_proj.weight": rand(hidden, dim),
        "midlayer.mlp.up_proj.weight": rand(hidden, dim),
        "midlayer.mlp.down_proj.weight": rand(dim, hidden),
    }
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": dim, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "intermediate_size": hidden, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "max_position_embeddings": 512, "vocab_size": 64,
        "draft_vocab_size": len(DRAFT_VOCAB), "torch_dtype": "float32",
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 1, 3]}}))
    return tensors


def _reference_logits(w, features, embeds):
    """LlamaForCausalLMEagle3's first step, from its published tensor names: fc, then the
    midlayer on [input_layernorm(embeds), hidden_norm(hidden)], causal, Llama RoPE."""
    norm = lambda x, key: F.rms_norm(x, (x.shape[-1],), w[key], 1e-6)  # noqa: E731
    hidden = features @ w["fc.weight"].T
    x = torch.cat([norm(embeds, "midlayer.input_layernorm.weight"),
                   norm(hidden, "midlayer.hidden_norm.weight")], dim=-1)
    seq = x.shape[1]
    heads = lambda t, n: t.view(1, seq, n, 32).transpose(1, 2)  # noqa: E731
    q = heads(x @ w["midlayer.self_attn.q_proj.weight"].T, 4)
    k = heads(x @ w["midlayer.self_attn.k_proj.weight"].T, 2).repeat_interleave(2, dim=1)
    v = heads(x @ w["midlayer.self_attn.v_proj.weight"].T, 2).repeat_interleave(2, dim=1)
    inv = 1.0 / 10000.0 ** (torch.arange(0, 32, 2).float() / 32)
    angles = torch.outer(torch.arange(seq).float(), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rotate = lambda t: torch.cat([-t[..., 16:], t[..., :16]], dim=-1)  # noqa: E731
    q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attended = attended.transpose(1, 2).reshape(1, seq, -1)
    h = hidden + attended @ w["midlayer.self_attn.o_proj.weight"].T
    mlp_in = norm(h, "midlayer.post_attention_layernorm.weight")
    h = h + (F.silu(mlp_in @ w["midlayer.mlp.gate_proj.weight"].T)
             * (mlp_in @ w["midlayer.mlp.up_proj.weight"].T)) @ w["midlayer.mlp.down_proj.weight"].T
    return norm(h, "norm.weight") @ w["lm_head.weight"].T


def test_a_public_layout_head_loads_and_computes_its_architecture(target, tmp_path):
    tensors = _public_folder(tmp_path / "head", target, torch.Generator().manual_seed(0))
    head = load_eagle3_head(tmp_path / "head", target.args)
    assert head.shape.aux_layers == (0, 1, 3) and head.shape.draft_vocab_size == 13
    tokens = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        _, features = target(tokens, return_hidden=True, hidden_layers=head.shape.aux_layers)
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        ours = head.draft_logits(head(head.project(features), target.tok_embeddings(tokens),
                                      positions))
        theirs = _reference_logits(tensors, features, target.tok_embeddings(tokens))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(head.target_ids(), DRAFT_VOCAB)


def test_round_trip_is_bit_equal(target, tmp_path):
    head = _head(target)
    save_eagle3_head(head, tmp_path / "out", dtype=torch.float32)
    again = load_eagle3_head(tmp_path / "out", target.args)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == list(head.shape.aux_layers)


@pytest.mark.parametrize("damage, message", [
    (lambda t, c: t.pop("midlayer.mlp.up_proj.weight"), "'midlayer.mlp.up_proj.weight' is missing"),
    (lambda t, c: t.__setitem__("fc.weight", torch.zeros(128, 100)), "'fc.weight' has shape"),
    (lambda t, c: t.__setitem__("d2t", torch.zeros(13, dtype=torch.long)), "d2t and t2d disagree"),
    (lambda t, c: t.__setitem__("extra.weight", torch.zeros(1)), "does not have: extra.weight"),
    (lambda t, c: c.__setitem__("target_hidden_size", 256), "target_hidden_size 256"),
    (lambda t, c: c.__setitem__("vocab_size", 65), "vocab_size 65"),
], ids=["missing", "shape", "vocab_map", "unknown", "other_target", "other_tokenizer"])
def test_broken_folders_are_explained(target, tmp_path, damage, message):
    from safetensors.torch import load_file

    _public_folder(tmp_path / "head", target, torch.Generator().manual_seed(1))
    tensors = load_file(str(tmp_path / "head" / "model.safetensors"))
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    damage(tensors, config)
    save_file(tensors, str(tmp_path / "head" / "model.safetensors"))
    (tmp_path / "head" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=message):
        load_eagle3_head(tmp_path / "head", target.args)


def test_draft_distribution_lives_on_the_draft_vocabulary(target):
    drafter = build_drafter("eagle3", target=target, head=_head(target))
    output = torch.randn(5, target.args.dim)

    class Request:
        sampling, vocab_size = SamplingParams(temperature=0.8, top_p=0.9), 64

    probs = drafter._draft_probs(output, Request)
    outside = torch.ones(64, dtype=torch.bool).index_fill(0, DRAFT_VOCAB, False)
    assert (probs[:, outside] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


def test_training_time_test_is_the_drafting_chain(target):
    """TTT step s at chain start t equals drafting s more tokens with the KV cache."""
    head = _head(target, seed=4)
    tokens = torch.tensor([PROMPTS[0] + [3, 4, 5, 6]])
    with torch.no_grad():
        _, features = target(tokens, return_hidden=True, hidden_layers=head.shape.aux_layers)
        outputs = ttt_outputs(head, tokens, features, target.tok_embeddings, 3)
        previous = torch.cat([torch.zeros_like(features[:, :1]), features[:, :-1]], dim=1)
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        embeds = target.tok_embeddings(tokens)
        for start in range(tokens.shape[1] - 2):
            view = KVCache.for_model(head, 1, 64, dtype=torch.float32, device="cpu").view(
                torch.tensor([0]), start + 3)
            chain = head(head.project(previous[:, :start + 1]), embeds[:, :start + 1],
                         positions[:, :start + 1], view)[:, -1:]
            torch.testing.assert_close(chain[0, 0], outputs[0][0, start], rtol=1e-5, atol=1e-5)
            for step in (1, 2):
                at = slice(start + step, start + step + 1)
                chain = head(chain, embeds[:, at], positions[:, at], view)
                torch.testing.assert_close(chain[0, 0], outputs[step][0, start], rtol=1e-5,
                                           atol=1e-5)


def test_default_feature_layers():
    assert default_aux_layers(36) == (1, 17, 32)  # Qwen3-8B
    assert default_aux_layers(4) == (0, 1, 3)


@pytest.mark.parametrize("verify", ["token", "block"])
def test_greedy_identity(target, verify):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    plain = RolloutEngine(target, max_batch_size=2, max_seq_len=64).generate(PROMPTS, params)
    engine = RolloutEngine(target, build_drafter("eagle3", target=target, head=_head(target)),
                           num_draft_tokens=3, max_batch_size=3, max_seq_len=64, verify=verify)
    assert [c.token_ids for c in engine.generate(PROMPTS, params)] == \
        [c.token_ids for c in plain]


@pytest.mark.slow
@pytest.mark.parametrize("verify", ["token", "block"])
def test_sequence_distribution_is_exact(target, verify):
    """A draft vocabulary holding 4 of the 6 sampled ids: the other two can only come from
    the residual, and the sequence law is still the target's."""
    params, vocab, n = SamplingParams(temperature=1.0, max_new_tokens=3, seed=23), 6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    head = _head(target, seed=5)
    drafter = build_drafter("eagle3", target=target, head=head)
    engine = RolloutEngine(target, drafter, num_draft_tokens=2, max_batch_size=2000,
                           max_seq_len=16, vocab_size=vocab, verify=verify)
    completions = engine.generate([prompt] * n, params)
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR
    assert engine.last_stats["accepted"] > 0
