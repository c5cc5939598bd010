"""Byte-level BPE tokenizer (HF `tokenizers`) with <pad>/<bos>/<eos>, stored as one tokenizer.json."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
TOKENIZER_FILE = "tokenizer.json"


class ByteLevelBPETokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"tokenizer lacks the special token {token}")
        self._tokenizer = tokenizer
        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eos_token_id = tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @property
    def backend(self) -> Tokenizer:
        return self._tokenizer

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int = 1024,
                            min_frequency: int = 2) -> "ByteLevelBPETokenizer":
        """Learn merges over UTF-8 bytes: every string is encodable, Cyrillic needs no special casing."""
        tokenizer = Tokenizer(models.BPE())
        # No prefix space: a joke's first word should tokenize the same as in a prompt.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; a joke starts with <bos> (as in training), so prompts do too by default."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def encode_batch(self, texts: list[str], add_bos: bool = True, add_eos: bool = False) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        head = [self.bos_token_id] if add_bos else []
        tail = [self.eos_token_id] if add_eos else []
        return [head + e.ids + tail for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path / TOKENIZER_FILE))
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> "ByteLevelBPETokenizer":
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | Path, *, revision: str | None = None,
                        **hub_kwargs: Any) -> "ByteLevelBPETokenizer":
        """Load tokenizer.json from a local directory or a Hub repo (same repo/revision as the model)."""
        from .hub import resolve_file
        return cls.from_file(resolve_file(repo_or_dir, TOKENIZER_FILE, revision=revision, **hub_kwargs))
