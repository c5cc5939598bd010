"""Load the configured models once, at worker start: from the package, a directory or the Hub, with the
CPU speed-ups (low-bit weights, a compiled decode step) applied before the first request."""
from __future__ import annotations

import logging
import os
import time

import torch

from bot.worker.engine import LoadedModel, ModelEngine
from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM
from rujokes_model.compiled_step import compiled_step
from rujokes_model.cpu_kernels import KernelBuildError, kernel_threads
from rujokes_model.lowbit_weights import use_lowbit_weights
from rujokes_model.pretrained import pretrained_path

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_source(size: str, source: str, device: torch.device) -> LoadedModel:
    """`source`: "bundled" (shipped in the package), "hub:owner/repo@revision", or a local directory."""
    revision = None
    if source == "bundled":
        location: str = str(pretrained_path(size))
    elif source.startswith("hub:"):
        location, _, revision = source[4:].partition("@")
        revision = revision or size  # one branch per size
    else:
        location = os.path.expanduser(source)
        if not os.path.isdir(location):
            raise FileNotFoundError(f"model directory {location} for {size} does not exist")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        # Serving processes own their float environment: denormal floats (the far tail of a softmax,
        # near-zero activations) are slow paths on x86 cores and change no sampled token (figures in
        # BENCHMARKS.md, "Figures behind code comments").
        torch.set_flush_denormal(True)
    model = TransformerForCausalLM.from_pretrained(location, revision=revision, device=device, dtype=dtype)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(location, revision=revision)
    return LoadedModel(model, tokenizer, source)


def build_engine(settings) -> ModelEngine:
    """Load every configured size that can be loaded; one that can't is logged and left out, not fatal."""
    device = resolve_device(settings.device)
    if settings.torch_threads:
        # Small models on a shared CPU: more intra-op threads than free cores make every op slower.
        torch.set_num_threads(settings.torch_threads)
    models: dict[str, LoadedModel] = {}
    for size, source in settings.model_sources().items():
        if not source or source == "none":
            continue
        try:
            models[size] = load_source(size, source, device)
            log.info("loaded %s from %s on %s", size, source, device)
        except (FileNotFoundError, OSError, ValueError) as error:
            log.warning("size %s unavailable (%s): %s", size, source, error)
    if not models:
        raise RuntimeError("no model could be loaded; train one with `rujokes-train --size nano` "
                           "or point MODEL_NANO at a model directory")
    for size, loaded in models.items():
        weights = "int8" if size in settings.cpu_int8_sizes else "bf16" if size in settings.cpu_bf16_sizes else None
        speed_up(size, loaded.model, cpu_weights=weights, compile=settings.compile_decode)
    return ModelEngine(models, device, compile=settings.compile_decode)


def speed_up(size: str, model: TransformerForCausalLM, *, cpu_weights: str | None, compile: bool) -> None:
    """Swap in low-bit CPU weights and compile the decode step now, so no request waits for either."""
    if cpu_weights and model.device.type == "cpu":
        try:
            layers = use_lowbit_weights(model, cpu_weights)
            log.info("%s: %d layers use %s weights, kernels on %d threads", size, layers, cpu_weights, kernel_threads())
        except KernelBuildError as error:  # slower, not broken: serve with the fp32 weights
            log.error("%s: keeping fp32 weights, the %s kernels are unavailable: %s", size, cpu_weights, error)
    if compile:
        started = time.monotonic()
        compiled_step(model).warm_up()
        log.info("%s: decode step compiled in %.1f s", size, time.monotonic() - started)
