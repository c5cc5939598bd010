"""rujokes-export --to transformers|gguf MODEL_DIR OUT"""
from __future__ import annotations

import argparse
import sys

import torch

from .architecture import ExportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rujokes-export", description="Export rujokes weights for transformers, vLLM, llama.cpp or Ollama.")
    parser.add_argument("--to", required=True, choices=["transformers", "gguf"], help="target format")
    parser.add_argument("model_dir", help="our model: a directory (config.json, model.safetensors, tokenizer.json) "
                                          "or a Hub repo id")
    parser.add_argument("out", help="transformers: the output directory; gguf: a .gguf file or a directory for one")
    parser.add_argument("--revision", default=None, help="Hub revision of MODEL_DIR (nano / mini / small)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="transformers weights dtype (default float32; the bundled mini is exact in bfloat16)")
    parser.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="GGUF weight type")
    args = parser.parse_args(argv)
    try:
        if args.to == "transformers":
            from .transformers_export import export_transformers
            path = export_transformers(args.model_dir, args.out, revision=args.revision,
                                       dtype=getattr(torch, args.dtype))
        else:
            from .gguf_export import export_gguf
            path = export_gguf(args.model_dir, args.out, revision=args.revision, outtype=args.outtype)
    except (ExportError, FileNotFoundError) as error:
        print(f"rujokes-export: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
