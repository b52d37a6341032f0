"""Tokenizers: a character tokenizer for the synthetic tasks, and Hugging Face tokenizer.json
files through the `tokenizers` library. Both expose the same small interface."""

from __future__ import annotations

import json
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
        self.stop_ids = (self.eos_id,)

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

    def format_prompt(self, text: str) -> str:
        return text

    def write_files(self, folder: Path) -> None:
        """The same vocabulary as Hugging Face tokenizer files (a word-level model over single
        characters), so an exported model comes with a tokenizer transformers loads."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(self.vocab)},
                                               unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in self.SPECIALS])
        tokenizer.save(str(Path(folder) / "tokenizer.json"))
        pad, bos, eos = self.SPECIALS
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": bos, "eos_token": eos, "pad_token": pad,
             "tokenizer_class": "PreTrainedTokenizerFast"}, indent=1))


class HFTokenizer:
    """A Hugging Face tokenizer: a `tokenizer.json`, or a model folder holding one, whose
    tokenizer_config.json names the special tokens and chat template and whose
    generation_config.json the stop ids (Qwen3: <|im_end|> and <|endoftext|>)."""

    def __init__(self, path: str, chat_template: bool = False):
        from tokenizers import Tokenizer

        file = Path(path)
        self.folder = file if file.is_dir() else None
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"tokenizer file {file} not found; model.tokenizer must be 'char', "
                             "'auto' or a path to a tokenizer.json (or a folder holding one).")
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises plain Exceptions
            raise ValueError(f"{file} is not a Hugging Face tokenizer file ({err}).") from None
        self.file = file
        config = _json(file.parent / "tokenizer_config.json")
        generation = _json(file.parent / "generation_config.json")
        self.eos_id = self._require(_token(config.get("eos_token")) or "<|im_end|>", file)
        self.pad_id = self._tok.token_to_id(_token(config.get("pad_token")) or "<|endoftext|>")
        if self.pad_id is None:
            self.pad_id = self.eos_id
        bos = _token(config.get("bos_token"))
        self.bos_id = self._tok.token_to_id(bos) if bos else None
        stops = generation.get("eos_token_id", [])
        stops = [stops] if isinstance(stops, int) else list(stops)
        self.stop_ids = tuple(dict.fromkeys([self.eos_id, *stops]))
        self.template = _chat_template(file.parent, config) if chat_template else None
        if chat_template and self.template is None:
            raise ValueError(f"task.chat_template=true but {file.parent} has no chat template "
                             "(tokenizer_config.json 'chat_template' or chat_template.jinja).")
        self._specials = {"bos_token": bos or "", "eos_token": self._tok.id_to_token(self.eos_id)}

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

    def format_prompt(self, text: str) -> str:
        """The prompt as one user turn of the chat template, ready for the assistant."""
        if self.template is None:
            return text
        return self.template.render(messages=[{"role": "user", "content": text}],
                                    add_generation_prompt=True, **self._specials)


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None


def _token(value) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as {"content": ...} objects.
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(folder: Path, config: dict):
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: take the default one
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    if source is None and (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text()
    if source is None:
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids as every consumer feeds them: BOS (when the tokenizer has one), then text."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return bos + tokenizer.encode(tokenizer.format_prompt(text))


def build_tokenizer(spec: str, chat_template: bool = False):
    """spec: 'char' or a tokenizer.json / model folder (resolve 'auto' first:
    titan_spec.models.resolve_tokenizer)."""
    if spec == "char":
        if chat_template:
            raise ValueError("task.chat_template=true needs a Hugging Face tokenizer; the "
                             "character tokenizer has no chat template.")
        return CharTokenizer()
    return HFTokenizer(spec, chat_template)
