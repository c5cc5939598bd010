"""A compiled decode step (gpt-fast style): one `torch.compile`d graph for every cached one-token step.

At these model sizes an eager decode step is mostly per-op overhead (dozens of tiny ops a layer), so
the step is compiled once and reused: the cache column is a 0-d tensor and attention spans the whole
preallocated cache with a mask (`DecodePlan.static_inputs`), so nothing in the graph changes from one
step to the next. Shapes are symbolic (`dynamic=True`): one graph serves every batch size ≥ 2 and every
cache length, and one more serves a batch of one (PyTorch specialises sizes 0 and 1). Rows leaving or
joining a running batch therefore never recompile after `warm_up`.

On the CPU, inductor turns the step into C++ (`cpp_wrapper`: no Python between kernels). That needs a
C++ compiler and the Python headers at the first call (≈ 10–30 s on two cores; later processes reuse
inductor's on-disk cache). Tokens are exactly those of the eager step up to float rounding order.
"""
from __future__ import annotations

import itertools
import threading
import types
import weakref

import torch
import torch.fx.experimental._config

from .decode_plan import DecodePlan

_numbers = itertools.count()


def _decode_step(model, plan: DecodePlan, cache: list, tokens: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, None], cache=cache, inputs=plan.static_inputs(column))[:, -1]


def _own_copy(function: types.FunctionType) -> types.FunctionType:
    """A copy of `function` with its own code object. torch.compile keeps its graphs per code object, so
    each model gets graphs of its own: nothing else can hit their cache entries, which is what makes
    skipping the guards on the model's modules safe."""
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_numbers)}")
    return types.FunctionType(code, function.__globals__, code.co_name)


class CompiledDecodeStep:
    """`step(tokens (B,), cache, plan, column)` → next-token logits (B, V), compiled on first use."""

    def __init__(self, model, *, cpp_wrapper: bool | None = None) -> None:
        self.model = model
        # Graph kinds compiled so far: (a lone row?, intra-op threads). Dynamo guards on the thread count
        # (inductor's C++ is built for it), so a process that changes torch.set_num_threads needs new graphs.
        self._compiled_for: set[tuple[bool, int]] = set()
        if cpp_wrapper is None:
            cpp_wrapper = model.device.type == "cpu"
        # Guards: checking every parameter and module attribute of the model before each call costs more
        # than the step itself (BENCHMARKS.md). The graph is tied to this one model, so only the
        # tensors passed per call (tokens, column, cache, plan) are guarded.
        self._step = torch.compile(_own_copy(_decode_step), fullgraph=True, dynamic=True,
                                   options={"cpp_wrapper": cpp_wrapper,
                                            # Inputs are checked by the guards of the first call; re-checking
                                            # every size and stride at each step costs more than small kernels.
                                            "size_asserts": False, "alignment_asserts": False,
                                            "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def __call__(self, tokens: torch.Tensor, cache: list, plan: DecodePlan, column: int | torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # the caller's cache and plan must be inference tensors too
            if not isinstance(column, torch.Tensor):
                column = torch.tensor(column, device=tokens.device)
            kind = (tokens.shape[0] == 1, torch.get_num_threads())
            if kind not in self._compiled_for:  # first call of its kind: guards checked, graph compiled
                self.model.prepare_for_decoding()  # derived weights made eagerly; the graph reads them
                # No duck sizing: two dims that happen to be equal now (a batch of 2 and 2 KV heads)
                # must not share a symbol, or a later call where they differ would fail a guard and recompile.
                # Floats (norm eps, attention scale) are constants of the model: specialised, not graph inputs
                # that would be boxed into tensors and read back at every call.
                with torch.fx.experimental._config.patch(use_duck_shape=False), \
                        torch._dynamo.config.patch(specialize_float=True):
                    logits = self._step(self.model, plan, cache, tokens, column)
                self._compiled_for.add(kind)
                return logits
            # Later calls check the graph's few remaining guards (the tensors passed per call): that costs no
            # more than skipping them did (BENCHMARKS.md), and a skip would be process-wide: dynamo keeps the
            # stance in a global, so a step running on one thread switched guards off for a compile of another
            # size's graphs on the compile thread, which could then reuse a graph of the wrong kind.
            return self._step(self.model, plan, cache, tokens, column)

    @torch.inference_mode()  # inference tensors, like those of generate and ContinuousBatch: guards tell them apart
    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2), columns: int = 8) -> None:
        """Compile now, for a lone row and for batches, so no request waits for a compile later."""
        device = self.model.device
        for batch in batch_sizes:
            mask = torch.ones(batch, 1, dtype=torch.long, device=device)
            cache = self.model.new_cache(batch, columns)
            plan = self.model.decode_plan(mask, columns)
            self(torch.zeros(batch, dtype=torch.long, device=device), cache, plan, 1)


# The steps of `compiled_step`, one per model and gone with it: the model itself stays a plain module.
_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_steps_lock = threading.Lock()  # a background compile (serving.py) and a caller may ask at once


def _built_for(model) -> tuple:
    """What a step's graphs depend on: the model's dtype, device, kinds of layers and their kernel switches.
    The graphs skip the guards on the model's modules, so a step traced before a swap of layers
    (lowbit_weights) would keep calling the old ones."""
    return (model.embed.weight.dtype, model.device,
            tuple((type(module), getattr(module, "cpu_decode_kernel", None)) for module in model.modules()))


def compiled_step(model) -> CompiledDecodeStep:
    """The model's compiled decode step for `generate(..., compile=True)` and `ContinuousBatch(compile=True)`,
    made on first request and reused while the model's dtype, device and layers stay what it was built for
    (otherwise the next request gets a fresh step, and compile)."""
    key = _built_for(model)
    with _steps_lock:
        step = _steps.get(model)
        if step is None or step.key != key:
            step = CompiledDecodeStep(model)
            step.key = key
            _steps[model] = step
        return step
