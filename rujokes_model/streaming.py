"""Streaming text out of generation: byte-level BPE can split one Cyrillic letter (2 UTF-8 bytes)
across tokens, so a piece is released only when it decodes to whole characters."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .generation import iter_generate

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Feeds tokens one at a time and returns only the newly completed text."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete UTF-8 sequence: wait for the next byte(s)
        piece = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece

    def flush(self) -> str:
        """Whatever is left at the end (a dangling partial byte becomes U+FFFD, as in a full decode)."""
        text = self.tokenizer.decode(self.ids)
        piece = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, **kwargs) -> Iterator[str]:
    """Yield decoded pieces of the continuation of `prompt`; their concatenation is the full decode."""
    input_ids = torch.tensor([tokenizer.encode(prompt)])
    decoder = IncrementalDecoder(tokenizer)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    for _, tokens, finished in iter_generate(model, input_ids, max_new_tokens, **kwargs):
        if tokens[0].item() in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        piece = decoder.push(tokens[0].item())
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
