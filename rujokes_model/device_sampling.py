"""Sampling a whole batch on its device: per-row settings and seeds, no host sync, fixed shapes.

`sampling.draw_tokens` is exact with torch.Generator objects, but a batch of seeded rows costs one
`multinomial` call (and its host syncs) per row and step; on a GPU that loop, not the model, sets the
step time. Here every row's draw is one tensor expression over the batch:
- noise is counter-based: a row's uniforms at a step are a hash of (its seed, its draw counter, the
  token id), so a seeded row's tokens depend on its seed alone, never on its batch mates or on when it
  joined, and are the same on every run on the same device;
- the draw is Gumbel-max: argmax(logits / T + Gumbel noise) over the tokens that survive top-k ∩ top-p,
  which picks each token with exactly its softmax probability;
- top-k, top-p and temperature are per-row tensors, applied through one sort, without data-dependent
  branches (a row with top_k 0 / top_p 1 keeps everything; temperature 0 is its argmax).
Seeded tokens differ from the torch.Generator path's (another random stream), not in distribution.
"""
from __future__ import annotations

import torch

from .sampling import filter_scaled_rows

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) in int64 arithmetic: products wrap, the low 32 bits are kept."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def row_uniforms(seeds: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) uniforms in (0, 1): row b's are a function of (seeds[b], counters[b]) and the column only."""
    columns = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    row_key = _mix32(_mix32(seeds & _MASK32) ^ _mix32((seeds >> 32) & _MASK32) * 3 + counters)
    bits = _mix32(_mix32(row_key[:, None] ^ columns[None, :]) + 0x9E3779B9)
    return ((bits >> 8).to(torch.float32) + 0.5) / 2.0 ** 24  # 24 bits: exact in float32, never 0 or 1


def draw_on_device(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One token per row (B,): per-row temperature (0: greedy), top_k (0: off), top_p (1: off), seed and
    draw counter, all (B,) tensors on the logits' device."""
    filtered = filter_scaled_rows(logits.float() / temperature.clamp_min(1e-5)[:, None], top_k, top_p)
    gumbel = -torch.log(-torch.log(row_uniforms(seeds, counters, logits.shape[-1])))
    drawn = (filtered + gumbel).argmax(-1)
    return torch.where(temperature > 0, drawn, logits.argmax(-1))


class DeviceRowSampler:
    """The per-row settings of a running batch as device tensors, kept in step with its rows."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        empty = torch.empty(0, device=device)
        self.temperature, self.top_p = empty, empty
        self.top_k = self.seeds = self.counters = empty.long()

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def join(self, settings: list) -> None:
        """Append rows with `RowSettings`-like settings (top_k, top_p, temperature, seed); a row without a
        seed gets one from torch's default generator, so unseeded rows still differ run to run."""
        seeds = [s.seed if s.seed is not None else int(torch.randint(0, 2 ** 62, ()))
                 for s in settings]
        new = {
            "temperature": torch.tensor([float(s.temperature) for s in settings]),
            "top_k": torch.tensor([int(s.top_k or 0) for s in settings]),
            "top_p": torch.tensor([1.0 if s.top_p is None else float(s.top_p) for s in settings]),
            "seeds": torch.tensor(seeds, dtype=torch.int64),
            "counters": torch.zeros(len(settings), dtype=torch.int64),
        }
        for name, values in new.items():
            setattr(self, name, torch.cat([getattr(self, name), values.to(self.device)]))

    def keep_rows(self, keep: torch.Tensor) -> None:
        for name in ("temperature", "top_k", "top_p", "seeds", "counters"):
            setattr(self, name, getattr(self, name).index_select(0, keep))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        tokens = draw_on_device(logits, self.temperature, self.top_k, self.top_p, self.seeds, self.counters)
        self.counters = self.counters + 1
        return tokens
