"""Install what `scripts/train_gpu.py --export DIR` brought back: join and verify parts, copy into the package.

    python scripts/install_gpu_weights.py DIR [DIR ...] [--sizes nano mini small]

The DIRs are what the GPU machine's calls brought back (the first holds the manifest; the others, if the
weights needed more than one return, the remaining parts). The archive is joined and checked against its
SHA-256 manifest first (a missing or damaged part stops the install before anything is copied); then each
size's weights replace rujokes_model/weights/<size>/ and load once as a check.
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
from trainer.parts import unpack_return  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", type=Path,
                   help="the folders the GPU calls brought back (read-only is fine: they are copied first)")
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_import")
    p.add_argument("--weights-root", type=Path, default=WEIGHTS_ROOT, help="install here (the package's weights)")
    args = p.parse_args()
    export = unpack_return(args.sources, args.work)
    print(f"joined, verified and unpacked into {export}")
    for size in args.sizes:
        source = export / "weights" / size
        if not (source / "model.safetensors").is_file():
            print(f"{size}: not in what came back, left as it is")
            continue
        TransformerForCausalLM.from_pretrained(source)  # refuses a checkpoint that does not match its config
        ByteLevelBPETokenizer.from_pretrained(source)
        target = args.weights_root / size
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        largest = max(f.stat().st_size for f in target.iterdir())
        print(f"{size}: installed into {target} (largest file {largest / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
