"""Per-step attention inputs for cached decoding, precomputed once after the prefill (gpt-fast style).

A decode step feeds one token per row and attends over every column cached so far. Everything that
step needs (padding mask, ALiBi distances, RoPE rotation) is known when the prompt is: building it
once per generation instead of once per step removes a dozen small ops from every step, and at
these model sizes a decode step is mostly per-op overhead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionInputs


@dataclass
class DecodePlan:
    prompt_len: int                 # L: the prefill's columns; step t writes column L + t
    padding: torch.Tensor           # (B, 1, 1, L + max_new) additive: -inf at prompt padding, else 0
    alibi: torch.Tensor | None      # (H, 1, L + max_new): -slope · (distance), distances descending
    rope: torch.Tensor | None       # (max_new, B, 1, D/2) complex rotation of each step's position
    dtype: torch.dtype              # the model's dtype, for the additive mask

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows`, as the caches do when finished requests leave the batch."""
        self.padding = self.padding.index_select(0, rows)
        if self.rope is not None:
            self.rope = self.rope.index_select(1, rows)

    def inputs(self, step: int) -> AttentionInputs:
        """Attention inputs for decode step `step` (0-based), whose token sits at column L + step."""
        column = self.prompt_len + step
        mask = self.padding[..., : column + 1]
        if self.alibi is not None:
            # The query at `column` is (column - k) from key k: the last column + 1 distances, in order.
            mask = (mask + self.alibi[..., -(column + 1):]).to(self.dtype)
        return AttentionInputs(column, mask, self.rope[step] if self.rope is not None else None)
