"""Byte-level BPE tokenizer (HF `tokenizers`) with <pad>/<bos>/<eos>, stored as one tokenizer.json.

A token stands for bytes, not characters: one Cyrillic letter (2 UTF-8 bytes) or emoji (4) may span
tokens. So decoding works on bytes and drops what is not a whole character (never shows U+FFFD for
it), and `cut_prompt` cuts a prompt only where a character starts.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
TOKENIZER_FILE = "tokenizer.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map, in which byte-level BPE spells its tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def prompt_text(prompt: str) -> str:
    """`prompt` as a model can go on from it: without trailing spaces and tabs. The pre-tokenizer gives a space
    to the word after it, so no trained token ends in one; after one the model writes nonsense
    (BENCHMARKS.md, "What a prompt's edge does to a joke")."""
    return prompt.rstrip(" \t")


def is_continuation_byte(byte: int) -> bool:
    """0b10xxxxxx: the second or later byte of a multi-byte UTF-8 character."""
    return byte & 0xC0 == 0x80


class ByteLevelBPETokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"tokenizer lacks the special token {token}")
        # Text is text: a prompt that spells "<eos>" or "<pad>" encodes as those characters, not as the control
        # tokens (which would end a joke before it starts, or vanish from the opening shown back). Our <bos>
        # and <eos> are added by id, never parsed from text.
        tokenizer.encode_special_tokens = True
        self._tokenizer = tokenizer
        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eos_token_id = tokenizer.token_to_id(EOS)
        self._bytes: list[bytes] | None = None  # per token id, built on first use
        self._special_bytes: dict[int, bytes] = {}

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
        """The text of `ids`. Bytes that make no whole character (a sequence cut off at either end, or
        stray bytes a model emitted) are dropped, not shown as U+FFFD; a U+FFFD in the text itself is kept."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="ignore")

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = True) -> bytes:
        table, specials = self._token_bytes(), self._specials()
        pieces = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id in specials:
                if not skip_special_tokens:
                    pieces.append(specials[token_id])
            elif 0 <= token_id < len(table):
                pieces.append(table[token_id])
        return b"".join(pieces)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (b"" for a special token, as `decode` skips them)."""
        token_id = int(token_id)
        table = self._token_bytes()
        return table[token_id] if 0 <= token_id < len(table) and token_id not in self._specials() else b""

    def starts_mid_character(self, token_id: int) -> bool:
        """True when the token's first byte continues a character begun in an earlier token."""
        data = self.token_bytes(token_id)
        return bool(data) and is_continuation_byte(data[0])

    def mid_character_ids(self) -> list[int]:
        """Every token that starts mid-character: `generate(mid_character_ids=...)` never cuts a prompt there."""
        return [token_id for token_id in range(len(self._token_bytes())) if self.starts_mid_character(token_id)]

    def cut_prompt(self, ids: list[int], max_tokens: int) -> list[int]:
        """The last tokens of `ids` that fit in `max_tokens`, starting where a character starts.

        Leading tokens that begin mid-character are dropped (a few bytes of one character at most per
        token), so the prompt's text is a suffix of the original. Should every kept token begin
        mid-character (max_tokens of 1 or 2 inside an emoji), the plain cut stands: `decode` drops the
        stray bytes anyway.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {max_tokens}")
        if len(ids) <= max_tokens:
            return list(ids)
        kept = list(ids[len(ids) - max_tokens:])
        start = next((i for i, token_id in enumerate(kept) if not self.starts_mid_character(token_id)), 0)
        return kept[start:]

    def fit_context(self, ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
        """The prompt tokens and the new-token limit that fit a context of `context` tokens, as the worker fits
        a joke: it gets its whole `max_new_tokens` where the prompt leaves room; a long prompt keeps up to half
        the context (its last tokens, from a whole character on: `cut_prompt`) and the joke what is left."""
        if max_new_tokens < 1 or context < 2:
            raise ValueError(f"need max_new_tokens ≥ 1 and a context ≥ 2, got {max_new_tokens} and {context}")
        kept = min(len(ids), max(context - max_new_tokens, context // 2))
        limit = max(1, min(max_new_tokens, context - kept))
        return self.cut_prompt(ids, context - limit), limit

    def _specials(self) -> dict[int, bytes]:
        self._token_bytes()
        return self._special_bytes

    def _token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
            added = self._tokenizer.get_added_tokens_decoder()
            table = []
            for token_id in range(self._tokenizer.get_vocab_size()):
                token = self._tokenizer.id_to_token(token_id) or ""
                # Added tokens are spelt as themselves, byte-level ones in the byte alphabet.
                plain = token_id in added or not all(char in byte_of for char in token)
                table.append(token.encode("utf-8") if plain else bytes(byte_of[char] for char in token))
            self._special_bytes = {token_id: table[token_id] for token_id, token in added.items() if token.special}
            self._bytes = table
        return self._bytes

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
