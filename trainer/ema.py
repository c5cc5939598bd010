"""An exponential moving average of the weights, evaluated and shipped in place of the raw weights.

A small fine-tuning set is seen several times; averaging the last few hundred steps smooths the noise
of a high learning rate without another pass over the data. The shadow copy is fp32 on the model's
device and is saved with each checkpoint, so `--resume` continues the same average.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

EMA_WEIGHTS = "ema.safetensors"


class EMAWeights:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def update(self, model: torch.nn.Module, step: int) -> None:
        # The early average would otherwise be dominated by the random init: warm the decay up.
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(saved[name])

    def copy_to(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.shadow[name].to(p.dtype))

    def save(self, directory: Path) -> None:
        # Tied embeddings are one Parameter, so named_parameters() lists them once: no shared memory here.
        save_file({k: v.cpu().contiguous() for k, v in self.shadow.items()}, str(Path(directory) / EMA_WEIGHTS))

    def load(self, directory: Path) -> bool:
        path = Path(directory) / EMA_WEIGHTS
        if not path.is_file():
            return False
        saved = load_file(str(path))
        for name, value in saved.items():
            self.shadow[name].copy_(value)
        return True
