"""The text tokenizer: train a small byte-level BPE with BAGEL/Qwen control tokens, save it as
``tokenizer.json`` in a model folder, and load ours or a BAGEL folder's Hugging Face tokenizer.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.model.config import SpecialTokenIds

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
_FIELDS = ("pad", "im_start", "im_end", "vision_start", "vision_end")
HF_TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                      "added_tokens.json", "generation_config.json")


class TextTokenizer:
    """encode / decode / special ids / vocab size over a ``tokenizers.Tokenizer`` or an HF tokenizer."""

    def __init__(self, backend: Any, kind: str) -> None:
        self._backend = backend
        self.kind = kind  # "tokenizers" or "transformers"
        ids = [self.token_to_id(tok) for tok in SPECIAL_TOKENS]
        missing = [tok for tok, i in zip(SPECIAL_TOKENS, ids) if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        found: dict[str, Any] = dict(zip(_FIELDS, ids))     # every id is an int: none is missing
        self.special_ids = SpecialTokenIds(**found)

    def token_to_id(self, token: str) -> int | None:
        if self.kind == "tokenizers":
            return self._backend.token_to_id(token)
        unk = getattr(self._backend, "unk_token_id", None)
        value = self._backend.convert_tokens_to_ids(token)
        return None if value is None or (value == unk and token != self._backend.unk_token) else int(value)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, without any control token."""
        if self.kind == "tokenizers":
            return list(self._backend.encode(text, add_special_tokens=False).ids)
        return list(self._backend.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids in use (the model's embedding table must be at least this large)."""
        if self.kind == "tokenizers":
            return self._backend.get_vocab_size(with_added_tokens=True)
        return len(self._backend)

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` (ours) or the HF tokenizer files into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "tokenizers":
            self._backend.save(str(folder / "tokenizer.json"))
        else:
            self._backend.save_pretrained(str(folder))

    @property
    def backend(self) -> Any:
        return self._backend


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> TextTokenizer:
    """Train a byte-level BPE on instruction/answer strings; the control tokens get ids 0–4."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return TextTokenizer(tokenizer, "tokenizers")


def has_tokenizer(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """Our ``tokenizer.json`` alone, or a BAGEL/Qwen folder's HF tokenizer files (offline only)."""
    folder = Path(folder)
    if (folder / "tokenizer_config.json").exists() or (folder / "vocab.json").exists():
        from transformers import AutoTokenizer

        return TextTokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True), "transformers")
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception on a damaged file
            raise ValueError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({exc})") from None
        return TextTokenizer(backend, "tokenizers")
    raise ValueError(f"{folder}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
