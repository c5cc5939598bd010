"""Continuous batching: requests join and leave a running batch between decode steps.

One shared, preallocated cache of `columns` columns. As in `iter_generate`, every row writes the same
column at each step; a joining row's prompt is prefilled so that it ends in the column just before the
next write, with the columns before it masked (left padding). So a row needs its prompt to fit before
the current column and its token budget to fit after it (`can_join`). Each row keeps its own sampling
settings and generator, so a seeded row's tokens do not depend on its batch mates or on when it joined.

A round is: `join` (optional) → `sample` → the caller decides which rows are done → `remove` → `feed`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionInputs
from .sampling import filter_logits, sample_tokens, sample_top_k, uniform


@dataclass
class RowSettings:
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0          # 0: greedy
    generator: torch.Generator | None = None


class ContinuousBatch:
    def __init__(self, model, columns: int | None = None) -> None:
        self.model = model
        self.columns = columns or model.config.max_seq_len
        if self.columns > model.config.max_seq_len and model.config.position == "rope":
            raise ValueError(f"{self.columns} columns exceed the RoPE context {model.config.max_seq_len}")
        self._reset()
        if model.config.position == "alibi":
            # distances[m] = columns - 1 - m: the last S entries are a query's distances at column S - 1.
            distances = torch.arange(self.columns - 1, -1, -1, device=model.device, dtype=torch.float32)
            self._alibi = -model.alibi[:, None, None] * distances          # (H, 1, columns)

    def _reset(self) -> None:
        self.cache: list | None = None
        self.next_column = 0                  # the column the next `feed` writes
        self.first: torch.Tensor | None = None  # (B,) each row's first real column
        self.padding: torch.Tensor | None = None  # (B, 1, 1, columns) additive: -inf before a row's first column
        self.logits: torch.Tensor | None = None   # (B, V) next-token logits
        self.settings: list[RowSettings] = []
        self._pending: torch.Tensor | None = None  # tokens sampled, not yet fed

    def __len__(self) -> int:
        return len(self.settings)

    def can_join(self, prompt_len: int, max_new_tokens: int) -> bool:
        if prompt_len < 1 or max_new_tokens < 1:
            return False
        if not self.settings:
            return prompt_len + max_new_tokens <= self.columns
        return prompt_len <= self.next_column and self.next_column + max_new_tokens <= self.columns

    @torch.inference_mode()
    def join(self, prompts: list[list[int]], settings: list[RowSettings], pad_token_id: int = 0) -> None:
        """Prefill `prompts` (token lists) as new rows at the end of the batch; check `can_join` first."""
        if self._pending is not None:
            raise RuntimeError("join between rounds: after feed, not between sample and feed")
        model, device = self.model, self.model.device
        width = max(len(p) for p in prompts)
        if not self.settings:
            self._reset()
            self.next_column = width
        end = self.next_column
        if width > end:
            raise ValueError(f"a prompt of {width} tokens cannot end before column {end}")
        n = len(prompts)
        ids = torch.full((n, width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, end), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, end - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask[:, -width:].cumsum(-1) - 1).clamp_min(0)
        cache = model.new_cache(n, self.columns)
        logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache, start=end - width)[:, -1]
        first = torch.tensor([end - len(p) for p in prompts], device=device)
        padding = torch.zeros(n, 1, 1, self.columns, dtype=torch.float32, device=device)
        padding.masked_fill_(torch.arange(self.columns, device=device)[None, None, None] < first[:, None, None, None],
                             float("-inf"))
        if self.cache is None:
            self.cache, self.first, self.padding, self.logits = cache, first, padding, logits
        else:
            for mine, theirs in zip(self.cache, cache):
                mine.append_rows(theirs)
            self.first = torch.cat([self.first, first])
            self.padding = torch.cat([self.padding, padding])
            self.logits = torch.cat([self.logits, logits])
        self.settings += settings

    @torch.inference_mode()
    def sample(self) -> torch.Tensor:
        """Each row's next token (B,), drawn with its own settings; `feed` writes them."""
        if not self.settings:
            raise RuntimeError("the batch is empty")
        top_k = uniform([s.top_k for s in self.settings])
        top_p = uniform([s.top_p for s in self.settings])
        temperature = uniform([s.temperature for s in self.settings])
        generators = [s.generator for s in self.settings]
        generator = None if all(g is None for g in generators) else generators
        greedy = [s.temperature <= 0 for s in self.settings]
        if all(greedy):
            tokens = self.logits.argmax(-1)
        elif not any(greedy) and isinstance(top_k, int) and 0 < top_k < self.logits.shape[-1] \
                and top_p in (None, 1.0) and not isinstance(temperature, list) and generator is None:
            tokens = sample_top_k(self.logits, top_k, float(temperature))
        else:
            temperatures = [max(t, 1e-5) for t in temperature] if isinstance(temperature, list) else max(temperature, 1e-5)
            filtered = filter_logits(self.logits, temperatures, top_k, top_p)
            samples = True if not any(greedy) else torch.tensor([not g for g in greedy], device=self.logits.device)
            tokens = sample_tokens(filtered, samples, generator)
        self._pending = tokens
        return tokens

    def remove(self, rows: list[int]) -> None:
        """Drop rows (by current index) from the batch, e.g. those that just finished."""
        if not rows:
            return
        gone = set(rows)
        kept = [i for i in range(len(self.settings)) if i not in gone]
        if not kept:
            self._reset()
            return
        keep = torch.tensor(kept, device=self.first.device)
        for layer_cache in self.cache:
            layer_cache.keep_rows(keep)
        self.first, self.padding = self.first.index_select(0, keep), self.padding.index_select(0, keep)
        self.logits = self.logits.index_select(0, keep)
        if self._pending is not None:
            self._pending = self._pending.index_select(0, keep)
        self.settings = [self.settings[i] for i in kept]

    @torch.inference_mode()
    def feed(self) -> None:
        """Write the sampled tokens at the next column and compute every row's next logits."""
        if not self.settings:  # every row left: nothing to write
            self._pending = None
            return
        if self._pending is None:
            raise RuntimeError("feed follows sample")
        column = self.next_column
        if column >= self.columns:
            raise RuntimeError("the batch's cache is full; rows must leave within their token budgets")
        mask = self.padding[..., : column + 1]
        rope = None
        if self.model.config.position == "alibi":
            mask = mask + self._alibi[..., -(column + 1):]
        else:
            rope = self.model._rotation((column - self.first)[:, None])
        inputs = AttentionInputs(column, mask.to(self.model.embed.weight.dtype), rope)
        self.logits = self.model(self._pending[:, None], cache=self.cache, inputs=inputs)[:, -1]
        self.next_column += 1
        self._pending = None
