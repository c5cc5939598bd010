"""Streaming text out of generation: byte-level BPE can split one Cyrillic letter (2 UTF-8 bytes)
across tokens, so a piece is released only when it decodes to whole characters."""
from __future__ import annotations

import codecs
from collections.abc import Iterator

import torch

from .generation import iter_generate
from .tokenizer import prompt_text

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Feeds tokens one at a time and returns only the newly completed text.

    An incomplete UTF-8 sequence is held back until its last byte comes; bytes that can make no
    character are dropped, as `tokenizer.decode` drops them, so the pieces add up to its full decode.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.emitted = ""

    def push(self, token_id: int) -> str:
        piece = self._utf8.decode(self.tokenizer.token_bytes(token_id))
        self.emitted += piece
        return piece

    def flush(self) -> str:
        """Whatever is left at the end: a dangling partial character is dropped, as in a full decode."""
        piece = self._utf8.decode(b"", final=True)
        self.emitted += piece
        return piece


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, **kwargs) -> Iterator[str]:
    """Yield decoded pieces of the continuation of `prompt`; their concatenation is the full decode.

    A prompt's trailing spaces are left to the continuation (`prompt_text`): the text goes on from the prompt
    without them, and its first piece drops its leading space, which the prompt already shows.
    """
    stripped = prompt_text(prompt)
    input_ids = torch.tensor([tokenizer.encode(stripped)])
    decoder = IncrementalDecoder(tokenizer)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("mid_character_ids", tokenizer.mid_character_ids())
    spaced = stripped != prompt
    for _, tokens, finished in iter_generate(model, input_ids, max_new_tokens, **kwargs):
        if tokens[0].item() in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        piece = decoder.push(tokens[0].item())
        if spaced and piece:
            piece, spaced = piece.lstrip(" "), False
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
