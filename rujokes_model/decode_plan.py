"""Per-step attention inputs for cached decoding, built once per batch instead of once per step (gpt-fast style).

Every row writes the same cache column at each decode step; a row's real tokens start at its own
first column (left padding before it), so its position at column c is c - first. From that, the
padding mask, the ALiBi distances and the RoPE rotation of any step are views and one gather: at
these model sizes a decode step is mostly per-op overhead, so nothing is rebuilt per step.
Rows can leave (`keep_rows`) and join (`append_rows`), as in continuous batching.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionInputs


@dataclass
class DecodePlan:
    first: torch.Tensor             # (B,) each row's first real column: its position 0
    padding: torch.Tensor           # (B, 1, 1, columns) additive: -inf before a row's first column, else 0
    alibi: torch.Tensor | None      # (H, 1, columns): -slope · distance, distances descending
    rotations: torch.Tensor | None  # (max_seq_len, D/2) complex RoPE rotation of each position
    dtype: torch.dtype              # the model's dtype, for the additive mask

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows`, as the caches do when finished requests leave the batch."""
        self.first, self.padding = self.first.index_select(0, rows), self.padding.index_select(0, rows)

    def append_rows(self, other: DecodePlan) -> None:
        """Add `other`'s rows after ours, as the caches do when requests join the batch."""
        self.first, self.padding = torch.cat([self.first, other.first]), torch.cat([self.padding, other.padding])

    def inputs(self, column: int) -> AttentionInputs:
        """Attention inputs for the decode step whose tokens sit at cache column `column`."""
        mask = self.padding[..., : column + 1]
        if self.alibi is not None:
            # The query at `column` is (column - k) from key k: the last column + 1 distances, in order.
            mask = (mask + self.alibi[..., -(column + 1):]).to(self.dtype)
        rope = self.rotations[column - self.first][:, None] if self.rotations is not None else None
        return AttentionInputs(column, mask, rope)
