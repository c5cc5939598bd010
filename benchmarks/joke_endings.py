"""How often a joke runs into its token limit, and what ending it at a sentence (rujokes_model/endings.py) costs.

    python benchmarks/joke_endings.py                          # bundled nano and mini, 200 jokes per length
    python benchmarks/joke_endings.py --sizes mini --samples 400 --model-dir mini=runs/gpu/mini

Each size writes `--samples` jokes per chat length (/settings: short, normal, long; their token limits are
the bot's defaults) through the worker's engine, with the bot's sampling settings and its classic openings,
weights as served (int8 where the worker serves int8). For the jokes that ran into the limit it compares
the text as the model left it (the stream's last partial) with the one users now get.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bot.common.settings import Settings
from bot.telegram.prompts import CLASSIC_OPENINGS, clean_model_text
from bot.worker.engine import ModelEngine
from bot.worker.engine_api import Job
from bot.worker.loading import load_source
from rujokes_model.config import cpu_weights_for
from rujokes_model.endings import ELLIPSIS
from rujokes_model.serving import speed_up


def lengths(settings: Settings) -> dict[str, int]:
    return {"short": settings.length_short_tokens, "normal": settings.max_new_tokens,
            "long": settings.length_long_tokens}


def measure(engine: ModelEngine, size: str, limit: int, samples: int, settings: Settings) -> dict:
    jobs = [Job(request_id=str(i), prompt=CLASSIC_OPENINGS[i % len(CLASSIC_OPENINGS)], top_k=settings.top_k,
                temperature=settings.temperature, top_p=None, max_new_tokens=limit, seed=i) for i in range(samples)]
    raw: dict[str, str] = {}  # the last partial of each row: the text before it was ended at a sentence
    started = time.perf_counter()
    outputs = engine.generate(size, jobs, on_partial=lambda request_id, text: raw.__setitem__(request_id, text))
    seconds = time.perf_counter() - started
    cut = [output for output in outputs if output.cut]
    shown = [clean_model_text(output.text) for output in cut]
    before = [clean_model_text(raw.get(output.request_id, output.text)) for output in cut]
    return {
        "size": size, "limit": limit, "jokes": samples, "cut": len(cut),
        "changed": sum(a != b for a, b in zip(before, shown)),
        "ellipsis": sum(text.endswith(ELLIPSIS) for text in shown),
        "dropped_chars": statistics.mean(len(a) - len(b) for a, b in zip(before, shown)) if cut else 0.0,
        "cut_chars": statistics.mean(len(text) for text in shown) if cut else 0.0,
        "all_chars": statistics.mean(len(clean_model_text(output.text)) for output in outputs),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["nano", "mini"])
    parser.add_argument("--model-dir", nargs="*", default=[], metavar="SIZE=DIR",
                        help="a size's model from a directory instead of the bundled one")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--lengths", nargs="+", choices=["short", "normal", "long"],
                        default=["short", "normal", "long"])
    args = parser.parse_args()
    settings = Settings(bot_token="0:bench")
    dirs = dict(item.split("=", 1) for item in args.model_dir)
    rows = []
    for size in args.sizes:
        loaded = load_source(size, dirs.get(size, "bundled"), torch.device("cpu"))
        speed_up(loaded.model, cpu_weights=cpu_weights_for(loaded.model.config), compile=False, name=size)
        engine = ModelEngine({size: loaded}, torch.device("cpu"))
        for length in args.lengths:
            row = measure(engine, size, lengths(settings)[length], args.samples, settings)
            row["length"] = length
            rows.append(row)
            print(row, flush=True)
    print(f"\ntop_k {settings.top_k}, temperature {settings.temperature}, {args.samples} jokes per row, "
          f"the bot's classic openings\n")
    print("| size | length (tokens) | ran into the limit | of them: ended earlier | of them: with … | "
          "chars dropped, mean | chars shown: cut jokes / all |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['cut']} ({100 * r['cut'] / r['jokes']:.0f} %)"
        print(f"| {r['size']} | {r['length']} ({r['limit']}) | {share} | {r['changed']} | {r['ellipsis']} | "
              f"{r['dropped_chars']:.0f} | {r['cut_chars']:.0f} / {r['all_chars']:.0f} |")


if __name__ == "__main__":
    main()
