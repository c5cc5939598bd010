"""Weights bundled inside the package, one directory per size: usable offline after a plain install."""
from __future__ import annotations

from pathlib import Path

from .config import SIZES

WEIGHTS_ROOT = Path(__file__).parent / "weights"


def bundled_sizes() -> list[str]:
    return [size for size in SIZES if (WEIGHTS_ROOT / size / "model.safetensors").is_file()]


def pretrained_path(size: str) -> Path:
    """Directory with config.json, model.safetensors and tokenizer.json of the bundled `size` model."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    path = WEIGHTS_ROOT / size
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no bundled weights for {size!r} (bundled: {', '.join(bundled_sizes()) or 'none'}). "
            f"Train them with `rujokes-train --size {size} --out {path}` or load a Hub revision instead.")
    return path
