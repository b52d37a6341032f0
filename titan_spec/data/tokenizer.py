"""Tokenizers: a character tokenizer for the synthetic tasks, and Hugging Face tokenizer.json
files through the `tokenizers` library. Both expose the same small interface."""

from __future__ import annotations

import string
from pathlib import Path


class CharTokenizer:
    """Fixed character vocabulary; ids are stable across runs and machines."""

    SPECIALS = ("<pad>", "<bos>", "<eos>")
    CHARS = string.digits + "+-*/=;:,.#()<> " + string.ascii_lowercase

    def __init__(self):
        self.vocab = list(self.SPECIALS) + list(self.CHARS)
        self._ids = {ch: i for i, ch in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the character tokenizer's vocabulary "
                f"({self.CHARS!r}); use model.tokenizer=<path to tokenizer.json> for real text."
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids if i >= len(self.SPECIALS))


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (e.g. from a local Qwen3 checkpoint folder)."""

    def __init__(self, path: str, bos_token: str | None = None, eos_token: str = "<|im_end|>",
                 pad_token: str = "<|endoftext|>"):
        from tokenizers import Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"tokenizer file {file} not found; model.tokenizer must be 'char' "
                             "or a path to a tokenizer.json (or a folder holding one).")
        self._tok = Tokenizer.from_file(str(file))
        self.eos_id = self._require(eos_token, file)
        self.pad_id = self._tok.token_to_id(pad_token)
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.bos_id = self._tok.token_to_id(bos_token) if bos_token else None

    def _require(self, token: str, file: Path) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{file} has no token {token!r}; pass its end-of-sequence token.")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids as every consumer feeds them: BOS (when the tokenizer has one), then text."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return bos + tokenizer.encode(text)


def build_tokenizer(spec: str):
    return CharTokenizer() if spec == "char" else HFTokenizer(spec)
