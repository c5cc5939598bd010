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

    def __post_init__(self) -> None:
        # The same rotations as real [cos, sin] pairs, for compiled steps (inductor has no complex codegen).
        self.real_rotations = None if self.rotations is None else torch.view_as_real(self.rotations).contiguous()

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

    def static_inputs(self, column: torch.Tensor) -> AttentionInputs:
        """`inputs` for a static-shape step: `column` is a 0-d tensor and the mask spans every column, the
        ones not written yet hidden, so a compiled step sees the same shapes at every column."""
        keys = torch.arange(self.padding.shape[-1], device=column.device)
        mask = self.padding.masked_fill(keys > column, float("-inf"))
        if self.alibi is not None:
            # alibi[..., -2] is -slope · 1, so the bias of key m for a query at `column` is that times (column - m).
            mask = mask + self.alibi[..., -2:-1] * (column - keys)
        rope = self.real_rotations[column - self.first][:, None] if self.real_rotations is not None else None
        return AttentionInputs(0, mask.to(self.dtype), rope, column)
