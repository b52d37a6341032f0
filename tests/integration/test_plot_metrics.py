"""tools/plot_metrics.py: metrics.jsonl -> PNG, and clear errors on bad input."""

import json

from tools.plot_metrics import main


def _record(step, phase="rl"):
    if phase == "sft":
        return {"step": step, "phase": "sft", "loss": 1.0 / step}
    return {"step": step, "phase": "rl", "reward_mean": 0.1 * step, "acceptance_length": 2.5,
            "acceptance_rate_per_position": [0.9, 0.7], "time_rollout_s": 1.0,
            "time_logprob_s": 0.2, "time_train_s": 0.5, "step_time_s": 2.0}


def test_plot_writes_a_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [_record(s, "sft") for s in (1, 2)] + [{"step": 2, "phase": "eval", "accuracy": 0}]
    lines += [_record(s) for s in (3, 4, 5)]
    metrics.write_text("\n".join(map(json.dumps, lines)) + "\n")
    assert main([str(metrics), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1}\nnot json\n')
    assert main([str(broken)]) == 2
    assert "broken.jsonl:2: not JSON" in capsys.readouterr().err
    empty = tmp_path / "eval_only.jsonl"
    empty.write_text(json.dumps({"step": 0, "phase": "eval", "accuracy": 0.0}) + "\n")
    assert main([str(empty)]) == 2
    assert "no 'rl' or 'sft' records" in capsys.readouterr().err
