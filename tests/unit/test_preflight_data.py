"""The launcher's data checks (titan_spec/preflight_data.py): a job whose samples cannot fit,
whose dataset has a 10 MB line, or whose tokenizer outgrows the model's vocabulary ends in
the preflight with one line naming the setting, before any worker starts."""

import json
import time

from tests.hf_models import write_tokenizer
from titan_spec import train


def _preflight(capsys, tmp_path, *overrides) -> tuple[int, list[str]]:
    code = train.main(["--config", "debug_model.toml", "--preflight", "--world-size", "2",
                       f"--job.dump_folder={tmp_path / 'run'}", *overrides])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def test_shipped_config_passes(capsys, tmp_path):
    assert _preflight(capsys, tmp_path) == (0, [])


def test_seq_len_without_room_for_the_answer_or_the_sft_sample(capsys, tmp_path):
    code, lines = _preflight(capsys, tmp_path, "--training.seq_len=8")
    assert code == 2 and len(lines) == 1
    assert "training.seq_len=8 leaves no room to answer: the task's longest prompt has" in lines[0]
    code, lines = _preflight(capsys, tmp_path, "--training.seq_len=20")
    assert code == 2 and len(lines) == 1
    assert "training.seq_len=20 is shorter than the task's SFT samples" in lines[0]
    assert _preflight(capsys, tmp_path, "--training.seq_len=20", "--sft.steps=0")[0] == 0


def test_a_10_mb_line_is_named_in_a_second(capsys, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "1+" * 5_000_000 + "1=", "answer": 2}) + "\n"
                    + json.dumps({"prompt": "1+1=", "answer": 2, "solution": "2"}) + "\n")
    start = time.perf_counter()
    code, lines = _preflight(capsys, tmp_path, "--task.name=jsonl",
                             f"--task.jsonl.path={path}", "--task.jsonl.heldout_fraction=0")
    assert time.perf_counter() - start < 3
    assert code == 2 and len(lines) == 1
    assert f"has 10000002 characters ({path}:1)" in lines[0]


def test_lines_without_solutions_refuse_sft(capsys, tmp_path):
    path = tmp_path / "rl_only.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": 2}) + "\n")
    code, lines = _preflight(capsys, tmp_path, "--task.name=jsonl", f"--task.jsonl.path={path}",
                             "--task.jsonl.heldout_fraction=0", "--rl.eval_problems=0",
                             "--sft.eval_problems=0")
    assert code == 2 and f"one has none ({path}:1)" in lines[0]


def test_a_tokenizer_larger_than_the_model_vocabulary(capsys, tmp_path):
    size = write_tokenizer(tmp_path / "tok", vocab_size=300)
    code, lines = _preflight(capsys, tmp_path, f"--model.tokenizer={tmp_path / 'tok'}")
    assert code == 2 and len(lines) == 1
    assert f"has {size} tokens but the model's vocabulary has 64 rows" in lines[0]


def test_a_load_path_that_is_missing_or_truncated(capsys, tmp_path):
    code, lines = _preflight(capsys, tmp_path, f"--checkpoint.load_path={tmp_path / 'none'}")
    assert code == 2 and len(lines) == 1 and "is not a folder" in lines[0]
    step = tmp_path / "step-4"
    step.mkdir()
    (step / "shard.distcp").write_bytes(b"12345")
    (step / "manifest.json").write_text(json.dumps(
        {"files": {"shard.distcp": {"bytes": 10, "sha256": "0"}}}))
    code, lines = _preflight(capsys, tmp_path, f"--checkpoint.load_path={step}")
    assert code == 2 and len(lines) == 1
    assert "shard.distcp has 5 bytes, the manifest says 10" in lines[0]


def test_a_json_file_that_is_not_a_tokenizer_is_named_once(capsys, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"a": 1}')
    code, lines = _preflight(capsys, tmp_path, f"--model.tokenizer={tmp_path / 'tok'}")
    assert code == 2 and len(lines) == 1
    assert f"{tmp_path / 'tok' / 'tokenizer.json'} is not a Hugging Face tokenizer" in lines[0]
