"""Equal-CPU-time ablations: which position/attention/vocab/lr gives the best validation bits/char.

    python benchmarks/train_ablation.py --size nano --cpu-budget 240 --out runs/ablation
    python benchmarks/train_ablation.py --group stages --size nano --cpu-budget 600   # pretraining, EMA
    python benchmarks/train_ablation.py --group tokenizer --size nano --cpu-budget 600   # BPE corpus × vocab

Each variant trains for the same process CPU time (all threads), then is evaluated on the whole
validation split. Prints a markdown table; the winner per size becomes its recipe default.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: spinning counts as process CPU time, so a run sharing the
# cores with other work would get fewer steps from the same budget than one on a quiet machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trainer.data import DEFAULT_CORPUS
from trainer.recipes import recipe
from trainer.stages import DEFAULT_PRETRAIN_CORPUS, train_two_stage
from trainer.train import train

VARIANTS = {
    "alibi+gqa V1024 lr3e-4 (original recipe)": dict(position="alibi", attention="gqa", vocab_size=1024, lr=3e-4),
    "alibi+gqa V1024": dict(position="alibi", attention="gqa", vocab_size=1024),
    "rope+gqa V1024": dict(position="rope", attention="gqa", vocab_size=1024),
    "alibi+mhla V1024": dict(position="alibi", attention="mhla", vocab_size=1024),
    "rope+mhla V1024": dict(position="rope", attention="mhla", vocab_size=1024),
    "alibi+gqa V2048": dict(position="alibi", attention="gqa", vocab_size=2048),
    "alibi+gqa V4096": dict(position="alibi", attention="gqa", vocab_size=4096),
}

# Two-stage variants on the size's own recipe: the budget covers both stages (the tokenizer's training,
# outside the loop, is not counted). `pretrain_share` of it goes to the literature first.
STAGE_VARIANTS = {
    "jokes only (recipe)": dict(),
    "lit→jokes 50%, tokenizer on both": dict(pretrain_share=0.5, tokenizer_corpus="both"),
    "lit→jokes 50%, tokenizer on jokes": dict(pretrain_share=0.5, tokenizer_corpus="jokes"),
    "lit→jokes 25%, tokenizer on both": dict(pretrain_share=0.25, tokenizer_corpus="both"),
    "lit→jokes 50%, tokenizer on both, V4096": dict(pretrain_share=0.5, tokenizer_corpus="both", vocab_size=4096),
    "jokes only + EMA 0.98": dict(ema_decay=0.98),
    "lit→jokes 50%, tokenizer on both + EMA 0.98": dict(pretrain_share=0.5, tokenizer_corpus="both", ema_decay=0.98),
}

# The tokenizer question: which corpus the BPE learns from and how large its vocabulary is, each trained
# jokes-only on the size's recipe (so only the tokenizer differs). Bits/char compare across vocabularies.
TOKENIZER_VARIANTS = {
    f"BPE on {corpus}, V{vocab}": dict(tokenizer_corpus=corpus, vocab_size=vocab)
    for corpus in ("jokes", "both") for vocab in (2048, 4096, 8192)
}


def run_tokenizer_variant(size: str, name: str, variant: dict, args) -> tuple:
    from trainer.data import prepare_corpus
    from trainer.stages import joint_tokenizer

    config = recipe(size, cpu_budget_s=args.cpu_budget, eval_every=10**9, vocab_size=variant["vocab_size"])
    jokes = prepare_corpus(args.data, val_fraction=config.val_fraction).train
    general = prepare_corpus(args.pretrain_data, val_fraction=config.val_fraction).train \
        if variant["tokenizer_corpus"] == "both" else []
    tokenizer = joint_tokenizer(jokes, general, config.vocab_size)  # outside the budget, as in two-stage runs
    return train(config, args.data, Path(args.out) / size / "tokenizer" / slug(name), progress=False,
                 tokenizer=tokenizer)


def run_stage_variant(size: str, name: str, variant: dict, args) -> tuple:
    variant = dict(variant)
    share, tokenizer_corpus = variant.pop("pretrain_share", None), variant.pop("tokenizer_corpus", "both")
    config = recipe(size, cpu_budget_s=args.cpu_budget, eval_every=10**9, **variant)
    out = Path(args.out) / size / "stages" / slug(name)
    if share is None:
        return train(config, args.data, out, progress=False)
    return train_two_stage(config, args.pretrain_data, args.data, out, pretrain_share=share,
                           tokenizer_corpus=tokenizer_corpus, progress=False)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="nano")
    p.add_argument("--cpu-budget", type=float, default=240.0)
    p.add_argument("--lr", type=float, default=2e-3, help="peak lr for variants that don't set one")
    p.add_argument("--data", default=DEFAULT_CORPUS)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--only", nargs="*", help="substrings of variant names to run")
    p.add_argument("--group", choices=["architecture", "stages", "tokenizer"], default="architecture")
    p.add_argument("--pretrain-data", default=DEFAULT_PRETRAIN_CORPUS)
    args = p.parse_args()
    rows = []
    variants = {"stages": STAGE_VARIANTS, "tokenizer": TOKENIZER_VARIANTS}.get(args.group, VARIANTS)
    run_variant = {"stages": run_stage_variant, "tokenizer": run_tokenizer_variant}.get(args.group)
    exact = set(args.only or ()) & set(variants)  # exact names select only themselves
    for name, variant in variants.items():
        if args.only and not (name in exact if exact else any(s in name for s in args.only)):
            continue
        if run_variant:
            started = time.perf_counter()
            result = run_variant(args.size, name, variant, args)
            rows.append((name, result.model.num_parameters(), result.steps, result.tokens_seen,
                         time.perf_counter() - started, result.final_eval))
            print(json.dumps({"variant": name, "steps": result.steps, **result.final_eval}, ensure_ascii=False),
                  flush=True)
            continue
        variant = dict(variant)
        model_overrides = {"position": variant.pop("position"), "attention": variant.pop("attention")}
        config = recipe(args.size, cpu_budget_s=args.cpu_budget, eval_every=10**9, **{"lr": args.lr, **variant})
        config.model_overrides.update(model_overrides)
        out = Path(args.out) / args.size / name.split(" (")[0].replace(" ", "_").replace("+", "-")
        started = time.perf_counter()
        result = train(config, args.data, out, progress=False)
        rows.append((name, result.model.num_parameters(), result.steps, result.tokens_seen,
                     time.perf_counter() - started, result.final_eval))
        print(json.dumps({"variant": name, "steps": result.steps, **result.final_eval}), flush=True)
    print(f"\n{args.size}, {args.cpu_budget:.0f} CPU-seconds per variant, full validation split\n")
    print("| variant | params | steps | tokens seen | val loss (nats/token) | chars/token | val bits/char |")
    print("|---|---|---|---|---|---|---|")
    for name, params, steps, tokens, wall, ev in rows:
        print(f"| {name} | {params:,} | {steps} | {tokens / 1e6:.2f} M | {ev['val_loss']:.3f} | "
              f"{ev['chars_per_token']:.2f} | **{ev['val_bpc']:.3f}** |")


if __name__ == "__main__":
    main()
