"""The CPU's compiled decode step, built ahead of time: the step exported once (torch.export), turned into a
shared library by AOTInductor, and called with a flat list of tensors.

The graph is compiled_step's (static shapes: the cache column a 0-d tensor, attention over the whole cache
with a mask; one graph for a lone row and one for any batch ≥ 2, each for any cache length), so tokens
are those of the eager step up to float rounding order. What changes is the call: torch.compile's step
spends about as long in Python per call (dynamo's frame, guards, wrappers) as in its C++; the library is
entered straight from one Python call (BENCHMARKS.md, "Ahead-of-time decode step").

The library holds code, not weights: the model's parameters and buffers are handed to it at load as
user-managed constants, so it reads the model's own memory. It depends only on shapes, so it is cached on
disk (under TORCHINDUCTOR_CACHE_DIR) by a hash of what makes the graph: the code, the model's config, layers
and shapes, torch, threads and CPU. A restart, or another model of the same shapes, loads it with no export
at all (tracing holds the GIL for seconds, which a worker's first eager jokes would wait for). Every library
is checked against the eager step once before it serves. A build prunes the packages no load has used for a
month (an upgrade's leftovers).

The library runs through our op `torch.ops.rujokes_aot.run` (kernels/aot_runner.cpp) around torch's C++
runner, not through torch's Python binding of it: the binding holds the GIL for the whole step, an op call
releases it, so a worker's event loop runs while a batch decodes, as beside torch.compile's step
(BENCHMARKS.md, "The step's library releases the GIL").
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import time
import weakref
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim
from torch.utils._pytree import tree_leaves, tree_map

from .decode_plan import DecodePlan
from .lowbit_weights import mark_weights_static


class AotUnavailable(RuntimeError):
    """This model's step cannot be exported and served ahead of time (the caller compiles it with dynamo)."""


class _FlatStep(nn.Module):
    """The decode step over flat tensors: what torch.export needs, and what the library is called with."""

    def __init__(self, model, cache_layout: list, has_alibi: bool, has_rotations: bool) -> None:
        super().__init__()
        self.model = model
        self.layout = cache_layout  # one cache per layer, only for its type and widths
        self.has_alibi, self.has_rotations = has_alibi, has_rotations

    def forward(self, tokens, column, padding, first, extras: list, caches: list) -> torch.Tensor:
        extras = list(extras)
        alibi = extras.pop(0) if self.has_alibi else None
        plan = DecodePlan(first, padding, alibi, None, self.model.embed.weight.dtype)
        plan.real_rotations = extras.pop(0) if self.has_rotations else None  # static_inputs reads only these
        cache = [layer.over(*tensors) for layer, tensors in zip(self.layout, caches)]
        return self.model(tokens[:, None], cache=cache, inputs=plan.static_inputs(column))[:, -1]


def flat_inputs(tokens: torch.Tensor, cache: list, plan: DecodePlan, column: torch.Tensor) -> list[torch.Tensor]:
    """The library's inputs in the exported order: tokens, column, padding, first, [alibi], [rotations], caches.

    The library trusts its inputs' shapes (AOTI_RUNTIME_CHECK_INPUTS=1 makes its C++ check them all, at a cost
    measured in BENCHMARKS.md), so the two that callers' caches and plans could disagree on are checked here: a
    mismatch raises instead of being written out of bounds. Other sizes are the model's, fixed in the graph.
    """
    first_cache = cache[0].tensors()[0]
    rows, columns = first_cache.shape[0], first_cache.shape[cache[0].COLUMN_DIM]
    if tokens.shape[0] != rows or plan.padding.shape[0] != rows or plan.padding.shape[-1] != columns:
        raise ValueError(f"tokens, plan and cache disagree: {tokens.shape[0]} tokens, a plan of "
                         f"{tuple(plan.padding.shape)}, a cache of {rows} rows × {columns} columns")
    inputs = [tokens, column, plan.padding, plan.first]
    if plan.alibi is not None:
        inputs.append(plan.alibi)
    if plan.real_rotations is not None:
        inputs.append(plan.real_rotations)
    for layer in cache:
        inputs.extend(layer.tensors())
    return inputs


# A package not loaded for this long is pruned when another is built: every upgrade of our code or of torch
# changes every key, and a cache kept across upgrades (compose's volume) would otherwise only grow.
PRUNE_UNUSED_DAYS = 30


def package_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    return Path(cache_dir()) / "rujokes_decode_steps"


def _mark_used(package: Path) -> None:
    """A loaded package's mtime says when it last served (a read-only cache keeps its build time)."""
    with contextlib.suppress(OSError):
        os.utime(package)


def prune_packages(directory: Path, keep: Path, unused_days: float = PRUNE_UNUSED_DAYS) -> list[Path]:
    """Remove the packages (and their unpacked libraries) not loaded for `unused_days`, except `keep`."""
    cutoff = time.time() - unused_days * 86400
    pruned = []
    for package in directory.glob("*.pt2"):
        with contextlib.suppress(OSError):  # another process pruned or replaced it first
            if package != keep and package.stat().st_mtime < cutoff:
                package.unlink()
                shutil.rmtree(package.with_suffix(".d"), ignore_errors=True)
                pruned.append(package)
    return pruned


def _example(model, lone: bool) -> tuple[_FlatStep, tuple, tuple]:
    """The flat step for a lone row or for batches, example arguments for it and their dynamic shapes: what
    an export traces and a loaded library is checked on (cheap: no tracing)."""
    rows, columns = (1, 17) if lone else (3, 17)  # sizes unlike any model dimension, so none is unified
    with torch.no_grad():  # not inference mode: export traces no inference tensors
        cache = model.new_cache(rows, columns)
        plan = model.decode_plan(torch.ones(rows, 1, dtype=torch.long, device=model.device), columns)
        tokens = torch.zeros(rows, dtype=torch.long, device=model.device)
        column = torch.tensor(3, device=model.device)
    step = _FlatStep(model, cache, plan.alibi is not None, plan.real_rotations is not None)
    extras = [t for t in (plan.alibi, plan.real_rotations) if t is not None]
    args = (tokens, column, plan.padding, plan.first, extras, [layer.tensors() for layer in cache])
    batch = Dim.STATIC if lone else Dim("batch", min=2)
    cols = Dim("columns", min=2)
    shapes = ({0: batch}, {}, {0: batch, 3: cols}, {0: batch},
              [{2: cols} if t is plan.alibi else {} for t in extras],
              [tuple({0: batch, layer.COLUMN_DIM: cols} for _ in layer.tensors()) for layer in cache])
    return step, args, shapes


def _export(model, lone: bool):
    """The exported step for a lone row or for batches, the module it traced and its example arguments."""
    step, args, shapes = _example(model, lone)
    mark_weights_static(model)
    with torch.no_grad():
        program = torch.export.export(step, args, dynamic_shapes=shapes, strict=True)
    lifted = [spec.target for spec in program.graph_signature.input_specs if spec.kind.name == "CONSTANT_TENSOR"]
    if lifted:  # a tensor the library could only copy in: the weights would no longer be the model's
        raise AotUnavailable(f"the step reads tensors that are neither parameters nor buffers: {lifted[:3]}")
    return program, step, args


@functools.cache
def _source_digest() -> str:
    """The package's own code (Python and C++): what the traced graph is made of, besides torch."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.cpp")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _package_key(step: _FlatStep, args: tuple, lone: bool) -> str:
    """What the library's code depends on, known without tracing it: the code that makes the graph (ours and
    torch's), the model's config and layers (their kinds, kernel switches and weight formats), its constants'
    and inputs' shapes and layouts, the kernels it calls, the intra-op threads inductor wrote its loops for and
    the CPU's vector capability. Tracing costs seconds of a held GIL, which a worker's first eager jokes
    would wait for at every start; the check after loading still compares the library with the eager step."""
    from . import cpu_kernels
    layout = lambda t: (tuple(t.shape), tuple(t.stride()), str(t.dtype))  # noqa: E731
    constants = [(name, *layout(t)) for name, t in (*step.named_parameters(remove_duplicate=False),
                                                     *step.named_buffers(remove_duplicate=False)) if t is not None]
    # Each layer's kind and plain settings (kernel switches, weight formats, widths); not `packing`, a
    # counter of this process that tells an in-memory step it is stale (compiled_step.py).
    modules = [(name, type(m).__qualname__, sorted((k, v) for k, v in vars(m).items()
                                                   if isinstance(v, (bool, int, float, str)) and k != "packing"))
               for name, m in step.named_modules()]
    inputs = [layout(t) for t in tree_leaves(args)]
    text = "\n".join(map(repr, [_source_digest(), step.model.config, lone, step.has_alibi, step.has_rotations,
                                 modules, constants, inputs, torch.__version__, cpu_kernels._loaded,
                                 torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()]))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _build_package(program, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        built = Path(scratch) / path.name
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(built), inductor_configs={"aot_inductor.package_constants_in_so": False})
        os.replace(built, path)  # atomic: a concurrent builder sees the whole file or none


def _library_in(package: Path) -> Path:
    """The shared library inside a package, unpacked once beside it (atomically, as packages are written);
    the proxy executor's description (a .json of the same name) stays beside it, where the runner looks."""
    unpacked = package.with_suffix(".d")
    if not unpacked.is_dir():
        with tempfile.TemporaryDirectory(dir=package.parent) as scratch:
            with zipfile.ZipFile(package) as archive:
                archive.extractall(Path(scratch) / "files")
            with contextlib.suppress(OSError):  # another process unpacked it first: theirs is the same
                os.replace(Path(scratch) / "files", unpacked)
    found = sorted(unpacked.rglob("*.so"))
    if len(found) != 1:
        raise AotUnavailable(f"expected one library in {package}, found {len(found)}")
    return found[0]


def _runner_ops():
    from .cpu_kernels import KernelBuildError, load_aot_runner
    try:
        load_aot_runner()
    except KernelBuildError as error:
        raise AotUnavailable(f"the step's runner could not be built: {error}") from error
    return torch.ops.rujokes_aot


class _NotCached(LookupError):
    """`AotStepLibrary(..., build=False)` found no package of its key in the disk cache."""


class AotStepLibrary:
    """The step for a lone row or for batches, as a loaded library reading the model's weights in place.
    Call it with `flat_inputs(...)`; it writes the caches in place and returns the logits (B, V)."""

    def __init__(self, model, lone: bool, *, build: bool = True) -> None:
        with torch.inference_mode(False):  # a caller decoding in inference mode: export traces normal tensors
            self._load(model, lone, build)

    @classmethod
    def from_cache(cls, model, lone: bool) -> "AotStepLibrary | None":
        """The library of this kind if the disk cache has it (loaded and checked: milliseconds), else None."""
        try:
            return cls(model, lone, build=False)
        except _NotCached:
            return None

    def _load(self, model, lone: bool, build: bool) -> None:
        step, example, _ = _example(model, lone)
        self.path = package_dir() / f"{_package_key(step, example, lone)}.pt2"
        self.built = not self.path.is_file()  # False: loaded from the cache, with no export
        if self.built and not build:
            raise _NotCached(self.path)
        if self.built:
            program, step, example = _export(model, lone)
            _build_package(program, self.path)
            prune_packages(self.path.parent, keep=self.path)
        else:
            _mark_used(self.path)
        ops = _runner_ops()
        handle = ops.load(str(_library_in(self.path)))
        weakref.finalize(self, ops.unload, handle)
        names = ops.constant_names(handle)
        wanted = dict(zip(names[::2], names[1::2]))  # the library's name → the module's (FQN)
        tensors = {**dict(step.named_parameters(remove_duplicate=False)),
                   **dict(step.named_buffers(remove_duplicate=False))}
        missing = [fqn for fqn in wanted.values() if fqn not in tensors]
        if missing:
            raise AotUnavailable(f"the library wants constants the model lacks: {missing[:3]}")
        # Every one, or the runner refuses: the library reads these tensors' memory, and the runner holds them.
        ops.bind(handle, list(wanted), [tensors[fqn].detach() for fqn in wanted.values()])
        self._handle, self._run = handle, ops.run.default
        self._check(step, example)

    def _check(self, step: nn.Module, example: tuple) -> None:
        """Logits and cache writes against the eager step's on the traced example (a wrong input order, a
        constant bound to the wrong tensor or a stale library would all show here)."""
        clone = lambda tree: tree_map(torch.clone, tree)  # noqa: E731
        ours, theirs = clone(example), clone(example)
        with torch.no_grad():
            pairs = [(self(tree_leaves(ours)), step(*theirs)), *zip(tree_leaves(ours), tree_leaves(theirs))]
        for got, expected in pairs:
            # Float rounding order differs (and int8 weights round activations to int16 at every layer, so
            # a last-bit difference can grow to ≈ 1e-4 of the largest value); a wrong binding is far off.
            error = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
            if error > 1e-2 * float(expected.abs().max() if expected.numel() else 0) + 1e-6:
                raise AotUnavailable(f"the built step differs from the eager step by {error:.3g}")

    def __call__(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self._run(self._handle, inputs)[0]
