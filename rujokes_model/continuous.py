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
from typing import Literal

import torch

from .compiled_step import CompiledDecodeStep, compiled_step
from .decode_plan import DecodePlan
from .device_sampling import DeviceRowSampler
from .sampling import draw_tokens


@dataclass
class RowSettings:
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0          # 0: greedy
    generator: torch.Generator | None = None  # the host sampler's per-row stream
    seed: int | None = None           # the device sampler's (device_sampling.py)


class ContinuousBatch:
    def __init__(self, model, columns: int | None = None, *, compile: bool = False,
                 step: CompiledDecodeStep | None = None, sampler: Literal["host", "device"] | None = None) -> None:
        self.model = model
        # step: the compiled static-shape decode step that runs each feed (compiled_step.py), owned by the
        # caller (the serving engine keeps one per model); compile=True looks up the model's own instead.
        self._step = step or (compiled_step(model) if compile else None)
        # sampler: "host" draws with each row's torch.Generator (sampling.py), exact and cheap on a CPU;
        # "device" draws the whole batch in one expression with counter-based seeds (device_sampling.py),
        # the default on a GPU, where the host path's per-row draws and syncs would set the step time.
        self.sampler = sampler or ("device" if model.device.type == "cuda" else "host")
        self.columns = columns or model.config.max_seq_len
        if self.columns > model.config.max_seq_len and model.config.position == "rope":
            raise ValueError(f"{self.columns} columns exceed the RoPE context {model.config.max_seq_len}")
        self._reset()

    def _reset(self) -> None:
        self.cache: list | None = None
        self.next_column = 0                  # the column the next `feed` writes
        self.plan: DecodePlan | None = None     # masks and positions of every row's decode steps
        self.logits: torch.Tensor | None = None   # (B, V) next-token logits
        self.settings: list[RowSettings] = []
        self._pending: torch.Tensor | None = None  # tokens sampled, not yet fed
        self._rows = DeviceRowSampler(self.model.device) if self.sampler == "device" else None

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
        if not self.settings:  # a new batch (remove() reset the last one): it starts where its prompts end
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
        plan = model.decode_plan(mask, self.columns)
        if self.cache is None:
            self.cache, self.plan, self.logits = cache, plan, logits
        else:
            for mine, theirs in zip(self.cache, cache):
                mine.append_rows(theirs)
            self.plan.append_rows(plan)
            self.logits = torch.cat([self.logits, logits])
        self.settings += settings
        if self._rows is not None:
            self._rows.join(settings)

    @torch.inference_mode()
    def forbid(self, rows: list[int], token_id: int) -> None:
        """Keep `token_id` from these rows' next draw (the joke engine's <eos> before a joke has begun)."""
        if rows:
            index = torch.tensor(rows, device=self.logits.device)
            self.logits = self.logits.index_put((index, torch.full_like(index, token_id)),
                                                torch.tensor(float("-inf"), device=self.logits.device))

    @torch.inference_mode()
    def sample(self) -> torch.Tensor:
        """Each row's next token (B,), drawn with its own settings; `feed` writes them."""
        if not self.settings:
            raise RuntimeError("the batch is empty")
        if self._rows is not None:
            tokens = self._rows.sample(self.logits)
        else:
            tokens = draw_tokens(self.logits, [s.top_k for s in self.settings], [s.top_p for s in self.settings],
                                 [s.temperature for s in self.settings], [s.generator for s in self.settings])
        self._pending = tokens
        return tokens

    @torch.inference_mode()  # the batch's tensors stay inference tensors, as a compiled step expects
    def remove(self, rows: list[int]) -> None:
        """Drop rows (by current index) from the batch, e.g. those that just finished."""
        if not rows:
            return
        gone = set(rows)
        kept = [i for i in range(len(self.settings)) if i not in gone]
        if not kept:
            self._reset()
            return
        keep = torch.tensor(kept, device=self.logits.device)
        for layer_cache in self.cache:
            layer_cache.keep_rows(keep)
        self.plan.keep_rows(keep)
        if self._rows is not None:
            self._rows.keep_rows(keep)
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
        if self._step is not None:
            self.logits = self._step(self._pending, self.cache, self.plan, column)
        else:
            self.logits = self.model(self._pending[:, None], cache=self.cache, inputs=self.plan.inputs(column))[:, -1]
        self.next_column += 1
        self._pending = None
