"""Our weights for other runtimes: transformers (Llama / DeepSeek-V2 layouts, no custom code) and GGUF
(llama.cpp, Ollama). transformers and gguf are imported only inside the export functions, so
rujokes_model works without them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .architecture import ExportError, target_architecture

__all__ = ["ExportError", "export_gguf", "export_transformers", "target_architecture", "to_transformers"]


def export_transformers(model_dir: str | Path, out_dir: str | Path, **kwargs: Any) -> Path:
    from .transformers_export import export_transformers as export
    return export(model_dir, out_dir, **kwargs)


def export_gguf(model_dir: str | Path, out: str | Path, **kwargs: Any) -> Path:
    from .gguf_export import export_gguf as export
    return export(model_dir, out, **kwargs)


def to_transformers(model, tokenizer):
    from .transformers_export import to_transformers as convert
    return convert(model, tokenizer)
