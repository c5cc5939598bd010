"""Preallocated per-batch caches (gpt-fast style): allocate once for prompt + new tokens, write in place."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of one MHA/GQA layer: (B, n_kv_head, max_len, head_dim) each."""

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, KV, T, D) at columns start..start+T; return everything cached so far."""
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]

    def write_at(self, column: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step (B, KV, 1, D) at the 0-d tensor `column`; return the whole cache (static shapes)."""
        self.keys.index_copy_(2, column.view(1), keys)
        self.values.index_copy_(2, column.view(1), values)
        return self.keys, self.values

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished requests leave the batch)."""
        self.keys, self.values = self.keys.index_select(0, rows), self.values.index_select(0, rows)

    def append_rows(self, other: "KVCache") -> None:
        """Add `other`'s rows after ours (requests joining a running batch); same length and layout."""
        self.keys, self.values = torch.cat([self.keys, other.keys]), torch.cat([self.values, other.values])

    # -- as flat tensors, for an exported step (aot_step.py) --------------------------------------------
    COLUMN_DIM = 2  # of each tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.keys, self.values

    def over(self, keys: torch.Tensor, values: torch.Tensor) -> "KVCache":
        """A cache of this layout over the given tensors (shared, not copied)."""
        view = object.__new__(KVCache)
        view.keys, view.values = keys, values
        return view

    # -- fixed memory, for a graphed step (cuda_graph_step.py) ----------------------------------------
    def first_rows(self, n: int) -> "KVCache":
        """A cache of our first `n` rows, sharing our memory."""
        return self.over(self.keys[:n], self.values[:n])

    def lives_in(self, home: "KVCache") -> bool:
        """Whether our rows are the first rows of `home`'s memory."""
        return self.keys.data_ptr() == home.keys.data_ptr() and self.values.data_ptr() == home.values.data_ptr()

    def move_into(self, home: "KVCache") -> None:
        """Copy our rows into `home`'s first rows and live there from now on."""
        n = self.keys.shape[0]
        home.keys[:n].copy_(self.keys)
        home.values[:n].copy_(self.values)
        self.keys, self.values = home.keys[:n], home.values[:n]


class LatentCache:
    """MHLA cache: only the compressed KV latent (B, max_len, kv_lora_rank) and the shared,
    already-rotated positional key (B, max_len, qk_rope_head_dim). No per-head keys or values.

    Both live side by side in one buffer, `entries` (B, max_len, rank + rope_dim): the absorbed decode
    attends over [latent | rope key] as one key without concatenating the cache every step.
    """

    def __init__(self, batch_size: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.entries = torch.zeros((batch_size, max_len, kv_lora_rank + rope_dim), dtype=dtype, device=device)
        self.latent, self.rope_key = self.entries.split([kv_lora_rank, rope_dim], dim=-1)

    def update(self, start: int, latent: torch.Tensor, rope_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + latent.shape[1]
        self.latent[:, start:end] = latent
        self.rope_key[:, start:end] = rope_key
        return self.latent[:, :end], self.rope_key[:, :end]

    def write_at(self, column: torch.Tensor, latent: torch.Tensor,
                 rope_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step at the 0-d tensor `column`; return the whole latent and rope key (static shapes)."""
        self.entries.index_copy_(1, column.view(1), torch.cat([latent, rope_key], dim=-1))
        return self.latent, self.rope_key

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished requests leave the batch)."""
        self._set_entries(self.entries.index_select(0, rows))

    def append_rows(self, other: "LatentCache") -> None:
        """Add `other`'s rows after ours (requests joining a running batch); same length and layout."""
        self._set_entries(torch.cat([self.entries, other.entries]))

    def _set_entries(self, entries: torch.Tensor) -> None:
        self.latent, self.rope_key = entries.split([self.latent.shape[-1], self.rope_key.shape[-1]], dim=-1)
        self.entries = entries

    # -- as flat tensors, for an exported step (aot_step.py) --------------------------------------------
    COLUMN_DIM = 1

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.entries,)

    def over(self, entries: torch.Tensor) -> "LatentCache":
        """A cache of this layout over `entries` (shared, not copied)."""
        view = object.__new__(LatentCache)
        view.latent, view.rope_key = self.latent, self.rope_key  # for their widths
        view._set_entries(entries)
        return view

    # -- fixed memory, for a graphed step (cuda_graph_step.py) ----------------------------------------
    def first_rows(self, n: int) -> "LatentCache":
        """A cache of our first `n` rows, sharing our memory."""
        return self.over(self.entries[:n])

    def lives_in(self, home: "LatentCache") -> bool:
        """Whether our rows are the first rows of `home`'s memory."""
        return self.entries.data_ptr() == home.entries.data_ptr()

    def move_into(self, home: "LatentCache") -> None:
        """Copy our rows into `home`'s first rows and live there from now on."""
        n = self.entries.shape[0]
        home.entries[:n].copy_(self.entries)
        self._set_entries(home.entries[:n])
