"""Task checkers: correct and incorrect answers, malformed outputs, malformed JSONL lines."""

import json
import random

import pytest

from titan_spec.config import load_config
from titan_spec.data.sft import SFTDataSource
from titan_spec.data.tokenizer import CharTokenizer
from titan_spec.rl.tasks import build_task, task_from_config
from titan_spec.rl.tasks.jsonl import answers_match, extract_answer


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "sorting"])
def test_reference_solutions_score_one_and_tokenise(name):
    task, rng, tok = build_task(name), random.Random(0), CharTokenizer()
    for _ in range(200):
        problem = task.sample(rng)
        assert task.reward(problem, problem.solution) == 1.0, problem
        tok.encode(problem.prompt + problem.solution)  # every character is in the vocabulary


@pytest.mark.parametrize("name, wrong", [
    ("arithmetic", ["", "#", "#12a", "1+2=3;#999999", "no answer"]),
    ("countdown", ["", "#", "#__import__('os')", "#1+", "#(((", "#999*999", "#7" * 40]),
    ("sorting", ["", "#", "#1,2", "#9,8,7,6,5"]),
])
def test_wrong_and_malformed_outputs_score_zero(name, wrong):
    task = build_task(name)
    problem = task.sample(random.Random(1))
    for completion in wrong:
        assert task.reward(problem, completion) == 0.0, completion


def test_countdown_rejects_reusing_a_number():
    task = build_task("countdown")
    problem = task.sample(random.Random(3))
    numbers = [int(n) for n in problem.prompt.split(">")[0].split(",")]
    twice = f"#{numbers[0]}+{numbers[0]}"
    if numbers.count(numbers[0]) == 1:
        assert task.reward(problem, twice) == 0.0


def test_arithmetic_checker():
    task = build_task("arithmetic")
    problem = task.sample(random.Random(2))
    assert task.reward(problem, f"junk;#{problem.answer}") == 1.0
    assert task.reward(problem, f"#{int(problem.answer) + 1}") == 0.0


def test_answer_extraction_and_numeric_match():
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("a \\boxed{3} then \\boxed{4}") == "4"
    assert extract_answer("work #### 1,234") == "1,234"
    assert extract_answer("the answer is 17 apples") == "17"
    assert extract_answer("\\boxed{unbalanced") is None
    assert extract_answer("no digits") is None
    assert answers_match("1,000", "1000") and answers_match("1000.0", "1000")
    assert answers_match("$42", "42") and answers_match("3/6", "1/2")
    assert not answers_match("41", "42")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_task_scores_answers(tmp_path):
    path = _write(tmp_path / "data.jsonl", [
        json.dumps({"prompt": "2+2?", "answer": 4}),
        "",
        json.dumps({"prompt": "half of 1?", "answer": "0.5", "solution": "\\boxed{1/2}"}),
    ])
    task = build_task("jsonl", path=path)
    assert len(task.problems) == 2
    four, half = task.problems
    assert task.reward(four, "it is \\boxed{4}") == 1.0
    assert task.reward(four, "#### 5") == 0.0
    assert task.reward(half, half.solution) == 1.0


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"prompt": "x"}), "missing field"),
    (json.dumps({"prompt": "", "answer": 1}), "'prompt' must be"),
    (json.dumps({"prompt": "x", "answer": [1]}), "'answer' must be"),
    (json.dumps({"prompt": "x", "answer": 1, "solution": 3}), "'solution' must be"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": 1}), line])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}.*on_bad_line=skip"):
        build_task("jsonl", path=path)


def test_jsonl_skip_counts_bad_lines(tmp_path, caplog):
    lines = [json.dumps({"prompt": "ok", "answer": 1})] + [line for line, _ in BAD_LINES]
    path = _write(tmp_path / "mixed.jsonl", lines)
    task = build_task("jsonl", path=path, on_bad_line="skip")
    assert len(task.problems) == 1 and len(task.bad_lines) == len(BAD_LINES)
    assert task.bad_lines[0].endswith("mixed.jsonl:2: invalid JSON (Expecting property name "
                                      "enclosed in double quotes)")
    assert "skipped 6 bad line(s)" in caplog.text


def test_jsonl_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[task.jsonl\] path"):
        load_config(None, ["--task.name=jsonl"])
    cfg = load_config(None, ["--task.name=jsonl", f"--task.jsonl.path={tmp_path}/missing.jsonl"])
    with pytest.raises(ValueError, match="is not a file"):
        task_from_config(cfg.task)
    empty = _write(tmp_path / "empty.jsonl", ["{oops"])
    with pytest.raises(ValueError, match="no usable problems"):
        build_task("jsonl", path=empty, on_bad_line="skip")


def test_sft_needs_solutions(tmp_path):
    path = _write(tmp_path / "rl_only.jsonl", [json.dumps({"prompt": "a", "answer": 1})])
    data = SFTDataSource(build_task("jsonl", path=path), CharTokenizer(), 2, 32, seed=0)
    with pytest.raises(ValueError, match="reference solution"):
        data.global_batch(1)


def test_unknown_task_suggests():
    with pytest.raises(ValueError, match="Did you mean 'sorting'"):
        build_task("sortin")


def test_jsonl_line_that_is_not_utf8_is_named_and_can_be_skipped(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"prompt": "1+1", "answer": 2}\n{"prompt": "2+\xff", "answer": 2}\n'
                     b'{"prompt": "3+3", "answer": 6}\n')
    with pytest.raises(ValueError, match=r"bytes.jsonl:2: not UTF-8 \(byte 0xff at column 15\)"):
        build_task("jsonl", path=str(path))
    task = build_task("jsonl", path=str(path), on_bad_line="skip")
    assert [p.prompt for p in task.problems] == ["1+1", "3+3"]
    assert task.locate(task.problems[1]).endswith("bytes.jsonl:3")


def test_jsonl_heldout_split_is_disjoint_and_independent_of_line_order(tmp_path):
    rows = [json.dumps({"prompt": f"{i}+{i}", "answer": 2 * i}) for i in range(300)]
    forward = build_task("jsonl", path=_write(tmp_path / "a.jsonl", rows), heldout_fraction=0.2)
    backward = build_task("jsonl", path=_write(tmp_path / "b.jsonl", rows[::-1]),
                          heldout_fraction=0.2)
    train = {p.prompt for p in forward.problems}
    held = {p.prompt for p in forward.heldout().problems}
    assert not train & held and len(train | held) == 300
    assert 30 <= len(held) <= 90
    assert held == {p.prompt for p in backward.heldout().problems}
    rng = random.Random(0)
    assert all(forward.heldout().sample(rng).prompt in held for _ in range(100))
    assert all(forward.sample(rng).prompt in train for _ in range(100))
    everything = build_task("jsonl", path=_write(tmp_path / "c.jsonl", rows))
    assert everything.heldout() is everything and len(everything.problems) == 300
