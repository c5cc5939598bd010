"""Install what `scripts/train_gpu.py --export DIR` brought back: join and verify parts, copy into the package.

    python scripts/install_gpu_weights.py DIR [DIR ...] [--sizes nano mini small] [--force]

The DIRs are what the GPU machine's calls brought back (the first holds the manifest; the others, if the
weights needed more than one return, the remaining parts). The archive is joined and checked against its
SHA-256 manifest first (a missing or damaged part stops the install before anything is copied). Then each
size that is bundled already is scored against its newcomer on the jokes' validation split, both the same way
here: only a newcomer with fewer bits per character replaces rujokes_model/weights/<size>/ (a recipe that
measured worse must not replace a better model; `--force` installs regardless). Each installed size loads once
as a check.
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM  # noqa: E402
from rujokes_model.config import SIZES  # noqa: E402
from rujokes_model.pretrained import WEIGHTS_ROOT  # noqa: E402
from trainer.data import DEFAULT_CORPUS, prepare_corpus  # noqa: E402
from trainer.evaluate import evaluate_texts  # noqa: E402
from trainer.parts import unpack_return  # noqa: E402
from trainer.recipes import recipe  # noqa: E402


def bits_per_char(folder: Path, texts: list[str], size: str) -> float:
    """Validation bits/char, scored as training scores it (rows of the recipe's length)."""
    model = TransformerForCausalLM.from_pretrained(folder)
    return evaluate_texts(model, ByteLevelBPETokenizer.from_pretrained(folder), texts,
                          seq_len=recipe(size).seq_len).bits_per_char


@functools.lru_cache(maxsize=1)
def validation(data: str) -> list[str]:
    return prepare_corpus(data).val


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", type=Path,
                   help="the folders the GPU calls brought back (read-only is fine: they are copied first)")
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_import")
    p.add_argument("--weights-root", type=Path, default=WEIGHTS_ROOT, help="install here (the package's weights)")
    p.add_argument("--data", default=DEFAULT_CORPUS, help="the jokes corpus whose validation split decides")
    p.add_argument("--force", action="store_true", help="install even where the bundled model scores better")
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
        if (target / "model.safetensors").is_file() and not args.force:
            if not Path(args.data).exists():
                sys.exit(f"{args.data} is needed to compare {size} with the bundled one (or pass --force)")
            texts = validation(args.data)
            new, old = bits_per_char(source, texts, size), bits_per_char(target, texts, size)
            if new >= old:
                print(f"{size}: kept the bundled weights ({old:.4f} bits/char; the new ones score {new:.4f})")
                continue
            print(f"{size}: the new weights score {new:.4f} bits/char, the bundled ones {old:.4f}")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        largest = max(f.stat().st_size for f in target.iterdir())
        print(f"{size}: installed into {target} (largest file {largest / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
