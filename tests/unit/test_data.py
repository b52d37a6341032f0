import random

import pytest
import torch

from titan_spec.data.sft import SFTDataSource
from titan_spec.data.tokenizer import CharTokenizer, HFTokenizer, build_tokenizer
from titan_spec.rl.tasks import build_task
from titan_spec.rl.tasks.arithmetic import ArithmeticTask


def test_char_tokenizer_round_trip_and_error():
    tok = CharTokenizer()
    text = "473+58=3+8+0=11;#531"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size <= 64
    with pytest.raises(ValueError, match="tokenizer.json"):
        tok.encode("Ä")


def test_worked_solution_is_correct_for_many_sums():
    rng = random.Random(0)
    task = ArithmeticTask(1, 5)
    for _ in range(500):
        problem = task.sample(rng)
        a, b = map(int, problem.prompt[:-1].split("+"))
        assert problem.answer == str(a + b)
        assert task.reward(problem, problem.solution) == 1.0
        # every column step is arithmetic that holds
        for step in problem.solution.split(";")[:-1]:
            lhs, rhs = step.split("=")
            assert sum(map(int, lhs.split("+"))) == int(rhs)


@pytest.mark.parametrize("completion, reward", [
    ("3+8+0=11;#531", 1.0), ("#531", 1.0), ("#530", 0.0), ("531", 0.0), ("#", 0.0),
    ("#53a", 0.0), ("#12;#531", 1.0),
])
def test_reward_checker(completion, reward):
    problem = ArithmeticTask().sample(random.Random(1))
    problem = type(problem)(prompt="473+58=", solution="", answer="531")
    assert ArithmeticTask().reward(problem, completion) == reward


def test_unknown_task_suggests():
    with pytest.raises(ValueError, match="Did you mean 'arithmetic'"):
        build_task("arithmetc")


def test_sft_batches_are_deterministic_and_masked():
    tok = CharTokenizer()
    source = SFTDataSource(ArithmeticTask(1, 3), tok, global_batch_size=4, seq_len=64, seed=5)
    a, b = source.global_batch(3), source.global_batch(3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs, source.global_batch(4).inputs)
    row = a.inputs[0].tolist()
    prompt_end = row.index(tok.encode("=")[0])  # '=' closes the prompt
    # The first supervised label is the first solution token; prompt labels are unsupervised.
    assert a.mask[0, :prompt_end].sum() == 0 and a.mask[0, prompt_end] == 1
    last = int(a.mask[0].nonzero().max())
    assert a.targets[0, last] == tok.eos_id


def test_sft_sample_longer_than_seq_len_is_an_error():
    source = SFTDataSource(ArithmeticTask(5, 5), CharTokenizer(), 2, seq_len=16, seed=0)
    with pytest.raises(ValueError, match="training.seq_len"):
        source.global_batch(1)


def test_hf_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1, "hello": 2, "world": 3, "[UNK]": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello world") == [2, 3]
    assert tok.eos_id == 1 and tok.pad_id == 0 and tok.vocab_size == 5
    with pytest.raises(ValueError, match="not found"):
        build_tokenizer(str(tmp_path / "missing"))


def test_char_tokenizer_exports_hugging_face_files(tmp_path):
    """An exported char-tokenizer model carries a tokenizer.json: the same ids both ways."""
    from titan_spec.data.tokenizer import encode_prompt

    char = CharTokenizer()
    char.write_files(tmp_path)
    hf = HFTokenizer(str(tmp_path))
    text = "12+345=357; (a, b) #x"
    assert encode_prompt(hf, text) == encode_prompt(char, text)
    assert hf.decode(char.encode(text) + [char.eos_id]) == text
    assert (hf.eos_id, hf.pad_id, hf.vocab_size) == (char.eos_id, char.pad_id, char.vocab_size)
