"""Serve a model the fast way: the weights format, compiled decode step and float settings the worker
uses by default, for the worker and for library users alike.

`load_for_serving("mini")` is the one call: int8 weights where the CPU kernels load (mini and small;
`cpu_weights_for`; fp32 models, nano among them, multiply on the kernels' fp32 loop), the compiled
decode step compiling on a background thread once the first answer is out while the eager path answers,
and `ServingModel.generate` switching to the compiled step the moment it is ready.
The switch changes no token: the compiled step computes what the eager one does (tests pin it), so a
caller cannot tell which path served it except by speed. `generate()` itself stays exact and eager.
Whatever cannot be had on this machine (no AVX2, no C++ compiler) is logged once and served without.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .compiled_step import compiled_step
from .config import SIZES, CpuWeights, cpu_weights_for
from .cpu_kernels import KernelBuildError, find_cxx
from .endings import MIN_JOKE_TOKENS, end_at_sentence
from .lowbit_weights import use_fp32_kernels, use_lowbit_weights
from .model import TransformerForCausalLM
from .pretrained import pretrained_path
from .tokenizer import ByteLevelBPETokenizer, prompt_text

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def use_persistent_compile_cache() -> Path:
    """Point inductor's cache at ~/.cache/rujokes/inductor (unless TORCHINDUCTOR_CACHE_DIR is set): its
    default lives in /tmp, which containers and reboots empty, and a warm cache turns a cold compile
    into a load."""
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if configured:
        return Path(configured)
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rujokes" / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def cuda_unavailable() -> str | None:
    """Why this machine has no CUDA device to run on, or None."""
    if torch.cuda.is_available():
        return None
    return "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA GPU"


def compile_unavailable(device: torch.device) -> str | None:
    """Why a compiled step cannot be built here, or None. On a CPU inductor writes C++."""
    if device.type == "cpu" and find_cxx() is None:
        return "no C++ compiler found (install g++ or set CXX)"
    return None


# One compile at a time in a process: dynamo's tracing is not safe to run on two threads at once (two
# sizes compiling together failed with a spurious guard error), and on a small CPU they would only
# share the cores. Later compiles queue in the order they were asked for.
_one_compile_at_a_time = threading.Lock()
# The compile thread's niceness: the lowest priority, so that answers (and the bot beside the worker) come
# first on a small machine. Tests that run under CPU burners set it to 0, or the compile starves.
COMPILE_NICENESS = 19
# A compile starts once the first answer is out (`BackgroundCompile.begin`), or this long after it was asked
# for: dynamo's tracing holds the GIL for seconds, and an eager joke written beside it took many times as
# long (BENCHMARKS.md), so the first joke after a start waited for the compile it was meant not to wait for.
COMPILE_START_WITHIN_S = 10.0


class BackgroundCompile:
    """Compiles a model's decode step on a daemon thread; `ready` turns true once every graph kind is built.

    Until then callers decode eagerly. Steps already in the disk cache are loaded at once (milliseconds, no
    tracing), so after a restart even the first answer is compiled. Otherwise the compile starts when a caller
    says its first answer is out (`begin`), when someone `wait`s for it, or after `start_within_s`. A compile
    that fails leaves `error` set and the model eager. It runs at the lowest CPU priority, so on a small
    machine it takes the cores nobody else wants: the eager answers meanwhile, and the bot starting beside
    the worker, come first.
    """

    def __init__(self, model: TransformerForCausalLM, name: str = "model",
                 start_within_s: float | None = None) -> None:
        self.model, self.name = model, name
        self.start_within_s = COMPILE_START_WITHIN_S if start_within_s is None else start_within_s
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self._begin = threading.Event()
        self._done = threading.Event()
        self._ready = False
        # Derived weights are made here, before the thread starts, so eager decoding on the caller's
        # thread never races the compile for them.
        model.prepare_for_decoding()
        use_persistent_compile_cache()
        self.step = compiled_step(model)  # made here: the one every later compiled_step(model) returns
        self._thread = threading.Thread(target=self._run, name=f"compile-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started, cached = time.monotonic(), False
        try:
            cached = self.step.load_cached()  # no lock: loading traces nothing, and a compile may hold it long
            if not cached:
                try:  # Linux: niceness is per thread, and inductor's compiler subprocesses inherit it
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPILE_NICENESS)
                except (AttributeError, OSError):  # not Linux, or not allowed: compile at the normal priority
                    pass
                self._begin.wait(self.start_within_s)
                started = time.monotonic()
                with _one_compile_at_a_time:
                    self.step.warm_up()
        except Exception as error:  # noqa: BLE001 - any compiler failure means "stay eager", never "stop serving"
            self.error = error
            log.error("%s: serving on the eager decode step; compiling it failed: %s", self.name,
                      str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__)
        else:
            self.seconds = time.monotonic() - started
            self._ready = True
            how = " and ".join(sorted(set(self.step.kinds.values())))
            how += ", loaded from the disk cache" if cached else ""
            log.info("%s: decode step compiled (%s) in %.1f s; batches from now on use it", self.name, how,
                     self.seconds)
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._ready

    def begin(self) -> None:
        """Start compiling now (if not started yet): the caller's first answer is out."""
        self._begin.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Start the compile now, block until it ended (or `timeout`); whether the compiled step is ready."""
        self.begin()
        self._done.wait(timeout)
        return self._ready


def speed_up(model: TransformerForCausalLM, *, cpu_weights: CpuWeights, compile: bool,
             name: str = "model") -> BackgroundCompile | None:
    """Swap in low-bit CPU weights now and start compiling the decode step in the background.

    Each speed-up that this machine cannot have is logged in one line and skipped: slower, never down.
    """
    if cpu_weights and model.device.type == "cpu":
        try:
            layers = use_lowbit_weights(model, cpu_weights)
            log.info("%s: %d layers use %s weights", name, layers, cpu_weights)
        except KernelBuildError as error:
            log.error("%s: keeping fp32 weights, the %s kernels are unavailable: %s", name, cpu_weights,
                      str(error).strip().splitlines()[0])
    elif model.device.type == "cpu" and model.embed.weight.dtype == torch.float32:
        try:  # fp32 weights, nothing rounded, but the kernels multiply and attend faster than torch (exact math)
            layers = use_fp32_kernels(model)
            log.info("%s: %d layers use fp32 weights on the CPU kernels", name, layers)
        except KernelBuildError as error:
            log.warning("%s: fp32 weights without the CPU kernels: %s", name, str(error).strip().splitlines()[0])
    if not compile:
        return None
    reason = compile_unavailable(model.device)
    if reason:
        log.error("%s: serving on the eager decode step: %s", name, reason)
        return None
    return BackgroundCompile(model, name)


def set_serving_float_mode(device: torch.device) -> None:
    if device.type == "cpu":
        # Denormal floats (the far tail of a softmax, near-zero activations) are slow paths on x86 cores
        # and change no sampled token (BENCHMARKS.md, "Figures behind code comments").
        torch.set_flush_denormal(True)


def load_on_device(location: str, *, revision: str | None,
                   device: torch.device) -> tuple[TransformerForCausalLM, ByteLevelBPETokenizer]:
    """A model and its tokenizer as a serving process loads them: bf16 on a GPU, fp32 on a CPU."""
    set_serving_float_mode(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = TransformerForCausalLM.from_pretrained(location, revision=revision, device=device, dtype=dtype)
    return model, ByteLevelBPETokenizer.from_pretrained(location, revision=revision)


@dataclass
class ServingModel:
    """A model and tokenizer served the default way; `generate` takes `TransformerForCausalLM.generate`'s
    arguments and uses the compiled step once it is ready."""
    model: TransformerForCausalLM
    tokenizer: ByteLevelBPETokenizer
    compiling: BackgroundCompile | None = None

    @property
    def compiled(self) -> bool:
        return self.compiling is not None and self.compiling.ready

    def wait_until_compiled(self, timeout: float | None = None) -> bool:
        return self.compiling is not None and self.compiling.wait(timeout)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        try:
            return self.model.generate(input_ids, max_new_tokens, compile=self.compiled, **kwargs)
        finally:
            if self.compiling is not None:
                self.compiling.begin()

    def complete(self, prompt: str, max_new_tokens: int = 150, *, n: int = 1, top_k: int | None = 10,
                 **kwargs) -> list[str]:
        """`n` texts that start with `prompt`, sampled and ended as the bot's jokes are: top-k 10, a prompt and
        limit fitted to the context as the worker fits them (a warning says when that cut either), and a text
        cut by its limit ends after its last whole sentence (endings.py), not mid-word."""
        prompt = prompt_text(prompt)  # as the bot's clean_prompt leaves it: no trailing space
        whole = self.tokenizer.encode(prompt)
        context = self.model.config.max_seq_len
        kept, limit = self.tokenizer.fit_context(whole, max_new_tokens, context)
        if len(kept) < len(whole):
            warnings.warn(f"a prompt of {len(whole)} tokens does not fit the model's context of {context} tokens: "
                          f"it reads the prompt's last {len(kept)} and writes up to {limit}", stacklevel=2)
        elif limit < max_new_tokens:
            warnings.warn(f"max_new_tokens={max_new_tokens} and a prompt of {len(whole)} tokens do not fit the "
                          f"model's context of {context} tokens: it writes up to {limit}", stacklevel=2)
        # What the model does not read is still the texts' start: byte-level BPE decodes the kept tokens to
        # exactly the end of the prompt.
        unread = prompt[:len(prompt) - len(self.tokenizer.decode(kept))] if len(kept) < len(whole) else ""
        kwargs.setdefault("min_new_tokens", MIN_JOKE_TOKENS)  # as the worker: no joke that is its opening alone
        out = self.generate(torch.tensor([kept] * n), limit, top_k=top_k, **kwargs)
        opening = prompt.strip()
        texts = []
        for row in out.tolist():
            text = (unread + self.tokenizer.decode(row)).strip()
            cut = self.tokenizer.eos_token_id not in row  # no text encodes to <eos>: only the model ends a row
            texts.append(end_at_sentence(text, opening) if cut else text)
        return texts


def load_for_serving(name_or_path: str | Path = "mini", *, revision: str | None = None,
                     device: str | torch.device = "auto", cpu_weights: CpuWeights | Literal["auto"] = "auto",
                     compile: bool = True, threads: int | None = None) -> ServingModel:
    """Load a bundled size ("nano", "mini", "small"), a local directory or a Hub repo the way the worker
    serves it by default: see the module docstring. `threads` sets torch's intra-op threads."""
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    location = str(pretrained_path(name_or_path)) if name_or_path in SIZES else str(name_or_path)
    model, tokenizer = load_on_device(location, revision=revision, device=device)
    weights = cpu_weights_for(model.config) if cpu_weights == "auto" else cpu_weights
    name = str(name_or_path) if name_or_path in SIZES else Path(location).name
    return ServingModel(model, tokenizer, speed_up(model, cpu_weights=weights, compile=compile, name=name))
