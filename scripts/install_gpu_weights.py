"""Install what `scripts/train_gpu.py --export DIR` brought back: join and verify parts, copy into the package.

    python scripts/install_gpu_weights.py DIR [--sizes nano mini small]

Every split file is joined and checked against its SHA-256 manifest first (a damaged part stops the
install before anything is copied); then each size's weights replace rujokes_model/weights/<size>/ and
load once as a check.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM  # noqa: E402
from rujokes_model.config import SIZES  # noqa: E402
from rujokes_model.pretrained import WEIGHTS_ROOT  # noqa: E402
from trainer.parts import join_all  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="the --export directory (read-only is fine: it is copied first)")
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_import")
    args = p.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    shutil.copytree(args.source, args.work)
    for joined in join_all(args.work):
        print(f"joined and verified {joined.relative_to(args.work)}")
    for size in args.sizes:
        source = args.work / "weights" / size
        if not (source / "model.safetensors").is_file():
            print(f"{size}: not in {args.source}, left as it is")
            continue
        TransformerForCausalLM.from_pretrained(source)  # refuses a checkpoint that does not match its config
        ByteLevelBPETokenizer.from_pretrained(source)
        target = WEIGHTS_ROOT / size
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        largest = max(f.stat().st_size for f in target.iterdir())
        print(f"{size}: installed into {target} (largest file {largest / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
