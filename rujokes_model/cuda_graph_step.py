"""A decode step replayed from CUDA graphs: per step, one graph launch instead of hundreds of kernel launches.

At these model sizes a GPU decode step is launch overhead, not arithmetic, and a CUDA graph removes it. A
graph replays fixed kernels on fixed memory, while a continuous batch reallocates its caches and plan
whenever rows join or leave. So this step owns the memory for up to `max_rows` rows: a batch's caches move
into it (once after each join or leave; every replay then writes them in place) and the plan's two small
per-row tensors are copied in at each step. A batch of n rows replays the graph of the smallest bucket
≥ n (1, 2, 4, …, max_rows), captured on its first use; the rows past n compute on stale but finite data
and are dropped. More rows than `max_rows` run `inner` directly.

`inner` is the step being replayed: the eager forward by default, or a compiled step (compiled_step.py),
whose Triton kernels a graph captures as well. `capture=False` runs the same step on the same buffers
without graphs: what the CPU tests pin (tokens equal to the plain step's through joins and leaves); only the
capture itself needs CUDA.
"""
from __future__ import annotations

from typing import Callable

import torch

from .decode_plan import DecodePlan

Step = Callable[[torch.Tensor, list, DecodePlan, torch.Tensor], torch.Tensor]


def eager_step(model) -> Step:
    def step(tokens: torch.Tensor, cache: list, plan: DecodePlan, column: torch.Tensor) -> torch.Tensor:
        return model(tokens[:, None], cache=cache, inputs=plan.static_inputs(column))[:, -1]
    return step


def buckets(max_rows: int) -> list[int]:
    """1, 2, 4, … below `max_rows`, then `max_rows`: at most twice the rows a batch needs, few graphs."""
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return sizes + [max_rows]


class GraphedDecodeStep:
    """`step(tokens (B,), cache, plan, column)` → next-token logits (B, V), as CompiledDecodeStep's."""

    def __init__(self, model, max_rows: int = 64, *, inner: Step | None = None, capture: bool | None = None) -> None:
        self.model = model
        self.max_rows = max_rows
        self.inner = inner or eager_step(model)
        self.capture = model.device.type == "cuda" if capture is None else capture
        if self.capture and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.buckets = buckets(max_rows)
        self.replays = {size: 0 for size in self.buckets}  # steps run per bucket (what the tests watch)
        self._columns: int | None = None  # the batches' cache length: fixed by the first call
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    @torch.inference_mode()  # the buffers are inference tensors, like the batches' caches
    def _allocate(self, plan: DecodePlan) -> None:
        model, rows, device = self.model, self.max_rows, self.model.device
        self._columns = columns = plan.padding.shape[-1]
        self.cache = model.new_cache(rows, columns)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.column = torch.zeros((), dtype=torch.long, device=device)
        self.plan = DecodePlan(torch.zeros(rows, dtype=plan.first.dtype, device=device),
                               torch.zeros(rows, 1, 1, columns, dtype=plan.padding.dtype, device=device),
                               plan.alibi, plan.rotations, plan.dtype)

    def _plan_of(self, size: int) -> DecodePlan:
        plan = DecodePlan(self.plan.first[:size], self.plan.padding[:size], self.plan.alibi, None, self.plan.dtype)
        plan.rotations, plan.real_rotations = self.plan.rotations, self.plan.real_rotations  # made once, in _allocate
        return plan

    def _run(self, size: int) -> torch.Tensor:
        return self.inner(self.tokens[:size], [c.first_rows(size) for c in self.cache], self._plan_of(size),
                          self.column)

    def __call__(self, tokens: torch.Tensor, cache: list, plan: DecodePlan, column: int | torch.Tensor) -> torch.Tensor:
        rows = tokens.shape[0]
        with torch.inference_mode():
            if rows > self.max_rows:
                if not isinstance(column, torch.Tensor):
                    column = torch.tensor(column, device=tokens.device)
                return self.inner(tokens, cache, plan, column)
            if self._columns is None:
                self._allocate(plan)
            if plan.padding.shape[-1] != self._columns:
                raise ValueError(f"a cache of {plan.padding.shape[-1]} columns, the step's is {self._columns}")
            size = next(b for b in self.buckets if b >= rows)
            for theirs, ours in zip(cache, self.cache):
                if not theirs.lives_in(ours):  # rows joined or left since the last step: a new cache
                    theirs.move_into(ours)
            self.tokens[:rows].copy_(tokens)
            self.plan.first[:rows].copy_(plan.first)
            self.plan.padding[:rows].copy_(plan.padding)
            self.plan.padding[rows:size].zero_()  # rows of no one attend everywhere: finite, and dropped
            # A Python int is filled in by a kernel: no host-to-device copy (and its sync) per step.
            if isinstance(column, torch.Tensor):
                self.column.copy_(column)
            else:
                self.column.fill_(column)
            self.replays[size] += 1
            if not self.capture:
                return self._run(size)[:rows].clone()
            graph, logits = self._graphs.get(size) or self._record(size)
            graph.replay()
            return logits[:rows].clone()  # the graph's output is overwritten by its next replay

    def _record(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Run once outside the graph first (on a side stream, as capture needs): lazy kernels, cuBLAS
        # workspaces and a compiled inner's first compile happen there. That run writes this step's keys,
        # which the replay right after writes again, identically.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(size)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool for every bucket's graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._run(size)
        self._graphs[size] = (graph, logits)
        return graph, logits
