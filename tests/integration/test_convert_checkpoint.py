"""tools/convert_checkpoint: round trips between hf, dcp, torchtitan, megatron and tensorstore
are bitwise, the drafter goes along, a DCP saved on 2 ranks converts in one process,
torchtitan's names are torchtitan's own adapter's, Megatron's layout is megatron-core's own (its
loader reads our export, its forward matches transformers), `inspect` reads every format, and a
failed conversion leaves nothing that looks complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hf_models import load_transformers, save_hf_model
from titan_spec.formats.hf_export import ExportError
from titan_spec.formats.store import ConversionError, open_checkpoint, write_checkpoint

pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


def _tool(*args):
    return subprocess.run([sys.executable, "-m", "tools.convert_checkpoint", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _tensors(folder, fmt=None) -> dict:
    checkpoint = open_checkpoint(folder, fmt)
    return {key: entry.read() for key, entry in checkpoint.entries.items()}


def _assert_bitwise(expected: dict, actual: dict):
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-rank run from an HF folder with an EAGLE drafter: its DCP step folder (saved by 2
    ranks, with optimizer state and model.json) and the source folder."""
    root = tmp_path_factory.mktemp("convert")
    source = save_hf_model(root / "hf")
    dump = root / "run"
    env = dict(os.environ, NPROC="2", PYTHON=sys.executable)
    result = subprocess.run(
        ["./run_train.sh", "--config", "debug_model.toml",
         f"--checkpoint.initial_load_path={source}", f"--job.dump_folder={dump}",
         "--sft.steps=2", "--sft.eval_problems=0", "--rl.steps=1", "--rl.prompts_per_step=2",
         "--rl.group_size=2", "--rl.eval_problems=0", "--rollout.max_new_tokens=8",
         "--drafter.distill_steps=2", "--training.global_batch_size=4",
         "--metrics.enable_tensorboard=false"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dcp": dump / "checkpoint" / "step-3", "hf": source}


@pytest.mark.slow
def test_round_trips_are_bitwise_and_carry_the_drafter(trained_run, tmp_path):
    dcp = trained_run["dcp"]
    original = {k: v for k, v in _tensors(dcp).items() if k.startswith(("model.", "drafter."))}
    assert any(k.startswith("drafter.") for k in original)
    # DCP (2 ranks) -> HF (+ drafter folder) -> DCP, in this one process
    assert _tool(dcp, tmp_path / "hf", "--to", "hf").returncode == 0
    assert (tmp_path / "hf-drafter" / "drafter.json").is_file()
    assert _tool(tmp_path / "hf", tmp_path / "dcp", "--to", "dcp").returncode == 0
    back = _tensors(tmp_path / "dcp")
    tied = "model.output.weight" not in back and "model.output.weight" in original
    _assert_bitwise({k: v for k, v in original.items()
                     if not (tied and k == "model.output.weight")}, back)
    # DCP -> torchtitan -> DCP, and DCP -> tensorstore -> DCP
    for fmt in ("torchtitan", "megatron", "tensorstore"):
        assert _tool(dcp, tmp_path / fmt, "--to", fmt).returncode == 0
        assert _tool(tmp_path / fmt, tmp_path / f"{fmt}-back", "--to", "dcp").returncode == 0
        _assert_bitwise(original, _tensors(tmp_path / f"{fmt}-back"))
    # the exported folder is a model transformers loads
    reference = load_transformers(tmp_path / "hf")
    assert sum(p.numel() for p in reference.parameters()) > 0


def test_hf_round_trips_through_every_format(tmp_path):
    source = save_hf_model(tmp_path / "src", moe=True)
    expected = _tensors(source)
    current = source
    for fmt in ("dcp", "tensorstore", "torchtitan", "megatron", "hf"):
        out = tmp_path / fmt
        write_checkpoint(open_checkpoint(current), out, fmt)
        _assert_bitwise(expected, _tensors(out))
        current = out
    from safetensors.torch import load_file

    def hf_tensors(folder):
        return {k: v for f in sorted(Path(folder).glob("*.safetensors"))
                for k, v in load_file(str(f)).items()}
    _assert_bitwise(hf_tensors(source), hf_tensors(current))


def test_dcp_keeps_the_optimizer_when_asked(trained_run, tmp_path):
    dcp = trained_run["dcp"]
    write_checkpoint(open_checkpoint(dcp), tmp_path / "full", "dcp", optimizer=True)
    write_checkpoint(open_checkpoint(dcp), tmp_path / "weights", "dcp")
    full, weights_only = open_checkpoint(tmp_path / "full"), open_checkpoint(tmp_path / "weights")
    assert full.has_optimizer and not weights_only.has_optimizer
    _assert_bitwise(_tensors(dcp), _tensors(tmp_path / "full"))
    assert (tmp_path / "full" / "train_state.json").is_file()


def test_torchtitan_names_are_torchtitans_own(tmp_path):
    """Our torchtitan writer against torchtitan 0.3's Qwen3StateDictAdapter.from_hf on the
    same HF weights: the same keys, the same tensors."""
    titan = pytest.importorskip("torchtitan.models.qwen3")
    from torchtitan.models.qwen3.state_dict_adapter import Qwen3StateDictAdapter

    for moe in (False, True):
        source = save_hf_model(tmp_path / f"hf{moe}", moe=moe, tokenizer=False)
        config = titan._debugmodel_moe("flex") if moe else titan._debugmodel("flex")
        config.enable_weight_tying = False
        for layer in config.layers:
            if layer.moe is not None:
                layer.moe.num_experts = 4
        hf_state = {k: v for k, v in load_transformers(source).state_dict().items()}
        from titan_spec.models.qwen3.hf_adapter import unfuse_experts

        theirs = Qwen3StateDictAdapter(config, None).from_hf(unfuse_experts(hf_state))
        write_checkpoint(open_checkpoint(source), tmp_path / f"tt{moe}", "torchtitan")
        import torch.distributed.checkpoint as dcp

        metadata = dcp.FileSystemReader(str(tmp_path / f"tt{moe}")).read_metadata()
        ours = {}
        for key, info in metadata.state_dict_metadata.items():
            ours[key] = torch.empty(tuple(info.size), dtype=info.properties.dtype)
        dcp.load(ours, checkpoint_id=str(tmp_path / f"tt{moe}"), no_dist=True)
        assert set(ours) == set(theirs)
        for key, tensor in theirs.items():
            assert torch.equal(ours[key], tensor), key


def test_inspect_reads_every_format(tmp_path):
    source = save_hf_model(tmp_path / "hf")
    for fmt in ("dcp", "torchtitan", "megatron", "tensorstore"):
        write_checkpoint(open_checkpoint(source), tmp_path / fmt, fmt)
    for fmt in ("hf", "dcp", "torchtitan", "megatron", "tensorstore"):
        result = _tool("inspect", tmp_path / fmt, "--tensors")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["format"] == fmt and report["groups"]["model"]["tensors"] >= 20
        assert report["tensors"]["model.tok_embeddings.weight"]["shape"] == [320, 64]


def test_failed_conversion_leaves_nothing_that_looks_complete(tmp_path):
    source = save_hf_model(tmp_path / "src")
    checkpoint = open_checkpoint(source)
    entry = checkpoint.entries["model.layers.1.attention.wo.weight"]

    def broken():
        raise OSError("No space left on device (injected)")
    entry.read = broken
    for fmt in ("hf", "dcp", "megatron", "tensorstore"):
        with pytest.raises((OSError, ConversionError, ExportError), match="injected"):
            write_checkpoint(checkpoint, tmp_path / fmt, fmt)
        assert not (tmp_path / fmt).exists()
        assert not list(tmp_path.glob(f".{fmt}*"))  # the temporary folder is gone too
    result = _tool(source, source, "--to", "hf")
    assert result.returncode == 2 and "exists; pass --overwrite" in result.stderr


def test_tensorstore_arrays_are_chunked_for_slice_reads(tmp_path):
    from titan_spec.formats.tensorstore_io import read_box

    source = save_hf_model(tmp_path / "hf")
    write_checkpoint(open_checkpoint(source), tmp_path / "ts", "tensorstore")
    import tensorstore as ts

    spec = {"driver": "zarr3", "path": "model.tok_embeddings.weight",
            "kvstore": {"driver": "ocdbt", "base": f"file://{tmp_path / 'ts'}"}}
    array = ts.open(spec, open=True).result()
    assert array.chunk_layout.write_chunk.shape[1] == 64
    rows = read_box(tmp_path / "ts", "model.tok_embeddings.weight", torch.float32,
                    (slice(80, 160),))
    assert torch.equal(rows, _tensors(source)["model.tok_embeddings.weight"][80:160])


def _megatron_model(rank, world_size, folder, ckpt, moe):
    """Megatron-core's own GPTModel (CPU, local layer spec) of the test config; -> the keys and
    global shapes its sharded_state_dict asks for and, for a dense model, its logits after its
    own dist_checkpointing.load of our export."""
    torch.cuda.current_device = lambda: "cpu"  # megatron's RoPE moves its table "to the GPU"
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(0, inference_rng_tracker=True)
    hf = json.loads((Path(folder) / "config.json").read_text())
    experts = dict(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32) if moe else {}
    config = TransformerConfig(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"],
        num_attention_heads=hf["num_attention_heads"],
        num_query_groups=hf["num_key_value_heads"], kv_channels=hf["head_dim"],
        ffn_hidden_size=hf["intermediate_size"], normalization="RMSNorm",
        layernorm_epsilon=hf["rms_norm_eps"], gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, qk_layernorm=True,
        attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True,
        bias_activation_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=False,
        persist_layer_norm=False, gradient_accumulation_fusion=False, **experts)
    spec = get_gpt_layer_local_spec(num_experts=4 if moe else None, qk_layernorm=True,
                                    normalization="RMSNorm")
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=hf["vocab_size"],
                     max_sequence_length=256, position_embedding_type="rope",
                     rotary_base=10000, share_embeddings_and_output_weights=False).eval()
    sharded = model.sharded_state_dict()
    wanted = {}
    for value in sharded.values():
        built = value.build() if isinstance(value, ShardedTensorFactory) else value
        for item in built if isinstance(built, list) else [built]:
            if isinstance(item, ShardedTensor):
                wanted[item.key] = tuple(item.global_shape)
    if moe:
        return {"wanted": wanted}
    tensors = {k: v for k, v in sharded.items() if not k.endswith("_extra_state")}
    loaded = dist_checkpointing.load(tensors, str(ckpt))
    missing = model.load_state_dict(loaded, strict=False).missing_keys
    assert all(key.endswith("_extra_state") for key in missing), missing
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.triu(torch.ones(16, 16), diagonal=1).bool()[None, None]
    with torch.no_grad():
        logits = model(tokens, torch.arange(16).expand(2, 16), attention_mask=mask)
    return {"wanted": wanted, "tokens": tokens, "logits": logits}


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_megatron_export_is_megatrons_layout(moe, tmp_path):
    """Keys and shapes are the ones megatron-core 0.16's GPTModel asks for; for the dense model
    Megatron's own loader reads our export and its forward matches transformers'."""
    pytest.importorskip("megatron.core")
    from tests.helpers import run_function

    source = save_hf_model(tmp_path / "hf", moe=moe, tokenizer=False)
    write_checkpoint(open_checkpoint(source), tmp_path / "mg", "megatron")
    import torch.distributed.checkpoint as dcp

    written = dcp.FileSystemReader(str(tmp_path / "mg")).read_metadata().state_dict_metadata
    result = run_function(1, _megatron_model, tmp_path, str(source), str(tmp_path / "mg"), moe)
    assert {k: tuple(v.size) for k, v in written.items()} == result["wanted"]
    if not moe:
        with torch.no_grad():
            expected = load_transformers(source)(result["tokens"]).logits
        assert (result["logits"] - expected).abs().max() < 1e-5
