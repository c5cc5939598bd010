"""rujokes_model: a small decoder-only Transformer for Russian jokes (pure library: tensors and files).

The config (`SIZES`, `ModelConfig`) imports no torch; the rest loads on first use, so a process that
only needs the size names (the Telegram bot) never imports torch.
"""
from importlib import import_module
from typing import Any

from .config import SIZES, ModelConfig

_LAZY = {
    "ByteLevelBPETokenizer": "tokenizer", "IncrementalDecoder": "streaming", "TransformerForCausalLM": "model",
    "bundled_sizes": "pretrained", "generate": "generation", "iter_generate": "generation",
    "load_for_serving": "serving", "pretrained_path": "pretrained", "stream_text": "streaming",
}

__all__ = ["SIZES", "ModelConfig", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
