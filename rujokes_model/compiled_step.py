"""A compiled decode step (gpt-fast style): one `torch.compile`d graph for every cached one-token step.

At these model sizes an eager decode step is mostly per-op overhead (dozens of tiny ops a layer), so
the step is compiled once and reused: the cache column is a 0-d tensor and attention spans the whole
preallocated cache with a mask (`DecodePlan.static_inputs`), so nothing in the graph changes from one
step to the next. Shapes are symbolic (`dynamic=True`): one graph serves every batch size ≥ 2 and every
cache length, and one more serves a batch of one (PyTorch specialises sizes 0 and 1). Rows leaving or
joining a running batch therefore never recompile after `warm_up`.

On the CPU each graph is built ahead of time (aot_step.py: exported, compiled by AOTInductor into a library
that reads the model's weights in place and is entered with no dynamo in between; cached on disk by shape).
That needs a C++ compiler and the Python headers at the first call (≈ 10–30 s a graph on two cores; later
processes load the cached library in about a second). A model that cannot be exported, and a GPU, get
torch.compile's graphs (C++ via inductor's `cpp_wrapper` on a CPU). Tokens are exactly those of the eager
step up to float rounding order.
"""
from __future__ import annotations

import itertools
import logging
import threading
import types
import weakref

import torch
import torch.fx.experimental._config

from .aot_step import AotStepLibrary, flat_inputs
from .decode_plan import DecodePlan
from .lowbit_weights import AbsorbedHeads, mark_weights_static

log = logging.getLogger(__name__)

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

    def __init__(self, model, *, cpp_wrapper: bool | None = None, ahead_of_time: bool | None = None) -> None:
        self.model = model
        # On the CPU each graph kind is built ahead of time (aot_step.py): the same graph, entered without
        # dynamo's per-call Python. A model it cannot export is compiled by dynamo instead, logged once.
        self.ahead_of_time = model.device.type == "cpu" if ahead_of_time is None else ahead_of_time
        self._libraries: dict[tuple[bool, int], AotStepLibrary] = {}
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
        if not isinstance(column, torch.Tensor):
            column = torch.tensor(column, device=tokens.device)
        kind = (tokens.shape[0] == 1, torch.get_num_threads())
        library = self._libraries.get(kind)
        if library is not None:
            return library(flat_inputs(tokens, cache, plan, column))
        if self.ahead_of_time and self._build_ahead_of_time(kind):
            return self._libraries[kind](flat_inputs(tokens, cache, plan, column))
        with torch.inference_mode():  # the caller's cache and plan must be inference tensors too
            if kind not in self._compiled_for:  # first call of its kind: guards checked, graph compiled
                self.model.prepare_for_decoding()  # derived weights made eagerly; the graph reads them
                mark_weights_static(self.model)
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

    @property
    def kinds(self) -> dict[tuple[bool, int], str]:
        """Each graph kind (a lone row?, intra-op threads) built so far, and how: "ahead-of-time" or "torch.compile"."""
        return {**{kind: "torch.compile" for kind in self._compiled_for},
                **{kind: "ahead-of-time" for kind in self._libraries}}

    def _build_ahead_of_time(self, kind: tuple[bool, int]) -> bool:
        """Build (or load from the cache) the library of this kind; False, logged, where it cannot be."""
        self.model.prepare_for_decoding()  # derived weights made eagerly: the library reads them
        try:
            self._libraries[kind] = AotStepLibrary(self.model, lone=kind[0])
        except Exception as error:  # noqa: BLE001 - any export or build failure means "compile with dynamo"
            self.ahead_of_time = False
            message = str(error).strip().splitlines()
            log.warning("decode step compiled by torch.compile: building it ahead of time failed: %s",
                        message[0] if message else type(error).__name__)
            return False
        return True

    def load_cached(self) -> bool:
        """Load every graph kind's library that the disk cache holds (no export, no build: cheap enough to do
        before the first answer); whether every kind is ready now. False where steps are not built ahead
        of time, or a cached library fails (warm_up then builds, or falls back to torch.compile, and logs)."""
        if not self.ahead_of_time:
            return False
        self.model.prepare_for_decoding()
        for lone in (True, False):
            kind = (lone, torch.get_num_threads())
            if kind in self._libraries:
                continue
            try:
                library = AotStepLibrary.from_cache(self.model, lone)
            except Exception:  # noqa: BLE001 - warm_up meets the same failure, and says what it was
                return False
            if library is None:
                return False
            self._libraries[kind] = library
        return True

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
    """What a step's graphs depend on: the model's dtype, device, kinds of layers, their kernel switches and
    packed weights. The graphs skip the guards on the model's modules, and a library built ahead of time
    holds the tensors it was given, so a step built before a swap of layers or a `repack` (lowbit_weights)
    would keep calling the old ones. AbsorbedHeads are left out: the first step derives them from their
    layer's packing (which is in the key), and must not be made stale by doing so."""
    return (model.embed.weight.dtype, model.device,
            tuple((type(module), getattr(module, "cpu_decode_kernel", None), getattr(module, "packing", None))
                  for module in model.modules() if not isinstance(module, AbsorbedHeads)))


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
