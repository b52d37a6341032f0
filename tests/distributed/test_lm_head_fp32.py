"""parallelism.lm_head_fp32: under bf16 FSDP2 the LM head is its own float32 unit, so logits come
out float32, free of the head's own bf16 rounding; a tied head is refused.
model.attention_fp64 is refused on CUDA (the float64 math attention kernel, in training too), and
bf16 on a layout without FSDP2 (it would stay fp32)."""

import pytest
import torch

from tests.helpers import run_function


def _logits(rank, world_size, lm_head_fp32):
    """-> the logits' dtype and their largest gap to the float32 product of the (bf16) final
    hidden states and the float32 head weight."""
    from tests.helpers import build_learner

    degrees = {"dp_shard": 2, "param_dtype": "bfloat16", "lm_head_fp32": lm_head_fp32}
    model, _, _ = build_learner("debug", degrees, world_size, seed=3)
    tokens = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, hidden = model(tokens, return_hidden=True)
        weight = model.state_dict()["output.weight"].full_tensor()  # the fp32 shards
        exact = hidden.float() @ weight.float().T
    return {"dtype": str(logits.dtype), "gap": (logits.float() - exact).abs().max().item()}


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_fp32_head_under_bf16_gives_fp32_logits(tmp_path):
    fp32_head = run_function(2, _logits, tmp_path, True)
    bf16_head = run_function(2, _logits, tmp_path, False)
    assert fp32_head["dtype"] == "torch.float32" and bf16_head["dtype"] == "torch.bfloat16"
    assert fp32_head["gap"] < 1e-5 < bf16_head["gap"]  # the head's own rounding is gone


def test_tied_head_fp64_attention_on_cuda_and_bf16_without_fsdp_are_refused():
    from torch import nn

    from titan_spec.config import load_config
    from titan_spec.parallel.fsdp import shard_head_fp32
    from titan_spec.preflight import preflight

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = nn.Embedding(8, 4)
            self.output = nn.Linear(4, 8, bias=False)
            self.output.weight = self.tok_embeddings.weight
    with pytest.raises(ValueError, match="lm_head_fp32=false"):
        shard_head_fp32(Tied(), mesh=None)
    cfg = load_config("debug_model.toml", ["--model.attention_fp64=true",
                                           "--training.device=cuda"])
    with pytest.raises(ValueError, match="model.attention_fp64=false"):
        preflight(cfg, 1)
    # bf16 without FSDP2 would silently stay fp32
    cfg = load_config("debug_model.toml", ["--parallelism.param_dtype=bfloat16"])
    with pytest.raises(ValueError, match="one data-parallel rank"):
        preflight(cfg, 1)
    preflight(cfg, 2)
