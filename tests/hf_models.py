"""Real-format Hugging Face model folders for tests, built here (nothing can be downloaded): a
byte-level BPE tokenizer trained with `tokenizers` on the arithmetic task's text, and a
randomly initialised `transformers` Qwen3 / Qwen3-MoE saved with `save_pretrained` in several
safetensors shards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB = 320  # model rows; the tokenizer has fewer (a padded vocabulary, as Qwen3's is)


def _corpus(count: int = 400) -> list[str]:
    from titan_spec.rl.tasks.arithmetic import ArithmeticTask

    task, rng = ArithmeticTask(1, 3), random.Random(0)
    problems = [task.sample(rng) for _ in range(count)]
    return [p.prompt + p.solution for p in problems]


def write_tokenizer(folder: Path, vocab_size: int = 300) -> int:
    """tokenizer.json + tokenizer_config.json (+ chat template) + generation_config.json;
    -> the tokenizer's vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    ids = [tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": ids, "pad_token_id": ids[1], "bos_token_id": None}))
    return tokenizer.get_vocab_size()


def hf_config(moe: bool = False, tied: bool = False, vocab: int = VOCAB, layers: int = 2):
    from transformers import Qwen3Config, Qwen3MoeConfig

    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, rope_theta=10_000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=tied)
    if moe:
        return Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                              num_experts_per_tok=2, norm_topk_prob=True, **common)
    return Qwen3Config(intermediate_size=128, **common)


def save_hf_model(folder: Path, moe: bool = False, tied: bool = False, seed: int = 0,
                  shard: str = "60KB", tokenizer: bool = True, **config) -> Path:
    """A transformers model saved in several shards (+ the tokenizer files) -> the folder."""
    from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cls = Qwen3MoeForCausalLM if moe else Qwen3ForCausalLM
    model = cls(hf_config(moe, tied, **config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size=shard)
    if tokenizer:
        write_tokenizer(folder)
    return folder


def load_transformers(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
