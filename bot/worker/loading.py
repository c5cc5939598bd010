"""Load the configured models once, at worker start: from the package, a directory or the Hub, with the
CPU speed-ups of rujokes_model.serving (low-bit weights now, the compiled decode step in the background:
the first requests are answered eagerly while it compiles)."""
from __future__ import annotations

import logging
import os

import torch

from bot.worker.engine import LoadedModel, ModelEngine
from rujokes_model.config import SIZES
from rujokes_model.pretrained import bundled_sizes, pretrained_path
from rujokes_model.serving import cuda_unavailable, load_on_device, resolve_device, speed_up

log = logging.getLogger(__name__)


class CannotServe(Exception):
    """The worker's settings leave it nothing to serve with (no model loads, a device this machine lacks):
    a configuration error, which `rujokes-worker` reports in one line with exit code 2 (a restart would repeat it)."""


def serving_device(setting: str) -> torch.device:
    """DEVICE's value as a torch device; "cuda" on a machine whose torch sees no GPU is a CannotServe."""
    device = resolve_device(setting)
    if device.type == "cuda" and (why := cuda_unavailable()):
        raise CannotServe(f"DEVICE={setting}, but {why}; set DEVICE=auto or DEVICE=cpu")
    return device


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
    model, tokenizer = load_on_device(location, revision=revision, device=device)
    return LoadedModel(model, tokenizer, source)


def build_engine(settings) -> ModelEngine:
    """Load every configured size that can be loaded; one that can't is logged and left out, not fatal."""
    device = serving_device(settings.device)
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
            if source == "bundled" and size not in bundled_sizes():  # the default of a size not shipped yet
                log.info("size %s is not bundled with this package; serving without it", size)
            else:
                log.warning("size %s unavailable (%s): %s", size, source, error)
    if not models:
        raise CannotServe("no model could be loaded (the reasons are logged above); train one with "
                          "`rujokes-train --size nano` or point MODEL_NANO at a model directory")
    # The size "active" requests get (WorkerConfig's rule) compiles now, in the background; the others when
    # first asked for: a compile shares the cores (and the GIL) with decoding, so the sizes an admin may never
    # switch to must not slow the default size's answers at every start.
    first = settings.default_size if settings.default_size in models else max(models, key=SIZES.index)
    compiling = {}
    for size, loaded in models.items():
        weights = "int8" if size in settings.cpu_int8_sizes else "bf16" if size in settings.cpu_bf16_sizes else None
        background = speed_up(loaded.model, cpu_weights=weights, compile=settings.compile_decode and size == first,
                              name=size)
        if background is not None:
            compiling[size] = background
    later = set(models) - {first} if settings.compile_decode and first in compiling else set()
    return ModelEngine(models, device, compiling=compiling, compile_on_first_use=later,
                       cuda_graphs=settings.cuda_graphs)
