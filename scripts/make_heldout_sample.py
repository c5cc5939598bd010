"""Regenerate tests/data/heldout/: openly licensed validation jokes and each bundled model's score on them.

    python scripts/make_heldout_sample.py            # the jokes and the figures
    python scripts/make_heldout_sample.py --figures  # only re-measure the figures (after new bundled weights)

The jokes: every joke of the corpus (../shared/data/russian_jokes.jsonl) whose `source` has an open licence
(CleanComedy, CC BY 4.0; Debian's fortunes-ru, GPL-2) and that the project's own hash split
(trainer.data.is_validation) puts in validation, in corpus order, normalised and deduplicated exactly as
trainer.data.load_corpus does. One file per licence, so each file carries one licence (see ATTRIBUTION.md
there). Deterministic: the same corpus gives byte-identical files.

The figures (bits_per_char.json): trainer.evaluate.evaluate_texts of each bundled size on those jokes, with
the sha256 of the weights it was measured on; tests/test_bundled_weights.py holds every bundled model to it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout, installed or not

from trainer.data import DEFAULT_CORPUS, dedupe_key, is_validation, normalize_text, prepare_corpus  # noqa: E402

OUT = ROOT / "tests/data/heldout"
# file name -> the corpus `source` prefixes it takes (their licence is in ATTRIBUTION.md)
OPEN_SOURCES = {
    "cleancomedy.jsonl": ("gorovuha/CleanComedy:",),  # CC BY 4.0
    "fortunes_ru.jsonl": ("debian/fortunes-ru:",),  # GPL-2
}
FIGURES = OUT / "bits_per_char.json"


def open_validation_jokes(corpus: Path) -> dict[str, list[dict[str, str]]]:
    """{file name: [{"text", "source"}, ...]} in corpus order."""
    seen: set[str] = set()
    chosen: dict[str, list[dict[str, str]]] = {name: [] for name in OPEN_SOURCES}
    for line in corpus.read_text(encoding="utf-8").split("\n"):  # not splitlines: jokes hold U+2028
        if not line.strip():
            continue
        record = json.loads(line)
        text = normalize_text(record["text"])
        key = dedupe_key(text)
        if not text or key in seen:  # load_corpus: first occurrence wins
            continue
        seen.add(key)
        for name, prefixes in OPEN_SOURCES.items():
            if record.get("source", "").startswith(prefixes) and is_validation(text):
                chosen[name].append({"text": text, "source": record["source"]})
    return chosen


def read_sample(folder: Path = OUT) -> list[str]:
    return [json.loads(line)["text"] for name in OPEN_SOURCES
            for line in (folder / name).read_text(encoding="utf-8").split("\n") if line.strip()]


def weights_sha256(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def measure(texts: list[str]) -> dict[str, dict]:
    from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, bundled_sizes, pretrained_path
    from trainer.evaluate import evaluate_texts

    figures = {}
    for size in bundled_sizes():
        path = pretrained_path(size)
        model = TransformerForCausalLM.from_pretrained(path)
        result = evaluate_texts(model, ByteLevelBPETokenizer.from_pretrained(path), texts)
        figures[size] = {"bits_per_char": round(result.bits_per_char, 4), "weights_sha256": weights_sha256(path)}
        print(f"{size}: {result.bits_per_char:.4f} bits/char on {len(texts)} jokes, {result.chars} chars")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    p.add_argument("--figures", action="store_true", help="keep the jokes, only re-measure the figures")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.figures:
        chosen = open_validation_jokes(args.corpus)
        validation = set(prepare_corpus(args.corpus).val)
        for name, records in chosen.items():
            assert all(r["text"] in validation for r in records), "a chosen joke is not in the validation split"
            with open(OUT / name, "w", encoding="utf-8", newline="\n") as out:
                for record in records:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(f"{name}: {len(records)} jokes")
    figures = {"sample": sorted(OPEN_SOURCES), "jokes": len(read_sample()), "sizes": measure(read_sample())}
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
