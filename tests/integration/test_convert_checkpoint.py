"""tools/convert_checkpoint: round trips between hf, dcp, torchtitan and tensorstore are bitwise,
the drafter goes along, a DCP saved on 2 ranks converts in one process, torchtitan's names are
torchtitan's own adapter's, `inspect` reads every format, and a failed conversion leaves nothing
that looks complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hf_models import load_transformers, save_hf_model
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
    for fmt in ("torchtitan", "tensorstore"):
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
    for fmt in ("dcp", "tensorstore", "torchtitan", "hf"):
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
    for fmt in ("dcp", "torchtitan", "tensorstore"):
        write_checkpoint(open_checkpoint(source), tmp_path / fmt, fmt)
    for fmt in ("hf", "dcp", "torchtitan", "tensorstore"):
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
    for fmt in ("hf", "dcp", "tensorstore"):
        with pytest.raises((OSError, ConversionError), match="injected"):
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
