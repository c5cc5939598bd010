"""Copy a training run into the package as the bundled weights of its size.

    python scripts/bundle_weights.py --run runs/mini --size mini --dtype bf16

Writes rujokes_model/weights/<size>/: config.json, model.safetensors (in --dtype), tokenizer.json,
the model card README.md and loss.png. Checkpoints and optimizer state stay behind.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, installed or not

from rujokes_model import SIZES, ByteLevelBPETokenizer, TransformerForCausalLM  # noqa: E402
from rujokes_model.pretrained import WEIGHTS_ROOT  # noqa: E402

# int8: per-row int8 matrices (the CPU worker's own rounding), a quarter of fp32; dequantized on load.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": "int8"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="output directory of rujokes-train")
    p.add_argument("--size", required=True, choices=SIZES)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype of the weights")
    p.add_argument("--weights-root", type=Path, default=WEIGHTS_ROOT, help="where bundled sizes live (the package's)")
    args = p.parse_args()
    target = args.weights_root / args.size
    if target.exists():
        shutil.rmtree(target)
    model = TransformerForCausalLM.from_pretrained(args.run)
    model.save_pretrained(target, dtype=DTYPES[args.dtype])
    ByteLevelBPETokenizer.from_pretrained(args.run).save_pretrained(target)
    for name in ("README.md", "loss.png"):
        if (args.run / name).is_file():
            shutil.copy(args.run / name, target / name)
    total = sum(f.stat().st_size for f in target.iterdir())
    print(f"bundled {args.run} as {target} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
