"""How often do samples copy the training corpus? 200 samples per model, the bot's sampling settings.

    python benchmarks/memorisation.py --models nano mini            # bundled sizes, or run directories
    python benchmarks/memorisation.py --models runs/small --samples 200 --min-words 12
    python benchmarks/memorisation.py --models nano mini --write-cards   # the figures into the bundled cards

A sample "copies" when it shares ≥ --min-words consecutive words with one training joke of the hash
split the models were trained on (trainer/memorisation.py). Prints one JSON line per model and a table.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, pretrained_path
from rujokes_model.config import SIZES
from trainer.data import DEFAULT_CORPUS, prepare_corpus
from trainer.memorisation import DEFAULT_MIN_WORDS, VerbatimIndex, memorisation_report, sample_texts
from trainer.report import SAMPLE_PROMPTS, memorisation_lines


def resolve(model: str) -> Path:
    return pretrained_path(model) if model in SIZES else Path(model)


def write_card_section(card: Path, report: dict) -> None:
    """Put the card's "## Memorisation" section (trainer/report.py's) in place of the old one, or before "## Data"."""
    text, section = card.read_text(), "\n".join(memorisation_lines(report)) + "\n"
    old = re.search(r"^## Memorisation\n.*?(?=^## |\Z)", text, re.S | re.M)
    if old:
        text = text[:old.start()] + section + text[old.end():]
    else:
        at = text.index("\n## Data\n") + 1
        text = text[:at] + section + text[at:]
    card.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["nano", "mini"])
    p.add_argument("--data", default=DEFAULT_CORPUS, help="the training corpus (its train split is indexed)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--min-words", type=int, default=DEFAULT_MIN_WORDS)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--show", type=int, default=0, help="print this many copying samples per model")
    p.add_argument("--write-cards", action="store_true", help="write each model's figures into its model card")
    args = p.parse_args()
    started = time.perf_counter()
    index = VerbatimIndex(prepare_corpus(args.data).train, args.min_words)
    print(f"indexed {len(index):,} {args.min_words}-word windows in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for name in args.models:
        path = resolve(name)
        model = TransformerForCausalLM.from_pretrained(path)
        tokenizer = ByteLevelBPETokenizer.from_pretrained(path)
        texts = sample_texts(model, tokenizer, SAMPLE_PROMPTS, args.samples, max_new_tokens=args.max_new_tokens)
        report = memorisation_report(index, texts)
        rows.append((name, report))
        print(json.dumps({"model": name, **report.to_dict()}, ensure_ascii=False), flush=True)
        if args.write_cards:
            write_card_section(path / "README.md", report.to_dict())
        for text in [t for t in texts if index.longest_run(t)][: args.show]:
            print("  copy:", text.replace("\n", " / ")[:300])
    print(f"\n{args.samples} samples per model (top-k 10, temperature 1, ≤ {args.max_new_tokens} new tokens), "
          f"a copy = ≥ {args.min_words} consecutive words of one training joke\n")
    print("| model | samples copying | share | longest shared run, words |")
    print("|---|---|---|---|")
    for name, report in rows:
        print(f"| {name} | {report.copying} / {report.samples} | {100 * report.copy_rate:.1f}% | "
              f"{report.longest_run} |")


if __name__ == "__main__":
    main()
