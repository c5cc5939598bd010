"""Console entry points: `rujokes-train` and `rujokes-eval`."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rujokes_model.cli_args import at_least, fraction, number_in, positive

from .data import DEFAULT_CORPUS
from .stages import DEFAULT_PRETRAIN_CORPUS, TOKENIZER_CORPORA


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rujokes-train", description="Train a rujokes model from a joke corpus.")
    p.add_argument("--size", choices=["nano", "mini", "small"], required=True)
    p.add_argument("--data", default=DEFAULT_CORPUS, help="corpus file/dir (.jsonl .json .csv .txt) or hf://owner/name")
    p.add_argument("--hub-dir", help="local directory laid out like the hf:// dataset repo (offline)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=at_least(1), help="optimizer steps (overrides --epochs)")
    budget.add_argument("--epochs", type=positive, help="passes over the training split")
    budget.add_argument("--cpu-budget", type=positive, dest="cpu_budget_s", help="stop after this many CPU seconds")
    p.add_argument("--time-limit", type=positive, dest="time_limit_s",
                   help="wall-clock cap in seconds on top of --steps/--epochs; the lr schedule compresses to fit")
    p.add_argument("--last-weights", action="store_true",
                   help="keep the last step's weights even when an earlier evaluation was better")
    p.add_argument("--dropout", type=number_in(0, 1, high_open=True),
                   help="dropout in attention and feed-forward layers")
    p.add_argument("--out", default=None, help="output directory (default runs/<size>)")
    p.add_argument("--batch-size", type=at_least(1))
    p.add_argument("--grad-accum", type=at_least(1))
    p.add_argument("--lr", type=positive)
    p.add_argument("--seq-len", type=at_least(2))
    p.add_argument("--vocab-size", type=at_least(259), help="BPE vocabulary (≥ 256 bytes + 3 special tokens)")
    p.add_argument("--eval-every", type=at_least(1))
    p.add_argument("--checkpoint-every", type=at_least(1))
    p.add_argument("--seed", type=int)
    p.add_argument("--position", choices=["rope", "alibi"])
    p.add_argument("--attention", choices=["mha", "gqa", "mhla"])
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a model config field, VALUE parsed as JSON (repeatable), e.g. n_layer=2")
    p.add_argument("--original-recipe", action="store_true",
                   help="the original model's settings (vocab 1024, lr 3e-4/5e-4) instead of our measured defaults")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    stages = p.add_argument_group("stages", "pretrain on a general corpus, then fine-tune on the jokes")
    start = stages.add_mutually_exclusive_group()
    start.add_argument("--init-from", metavar="DIR",
                       help="continue from a saved model (its weights, config and tokenizer): a second stage")
    start.add_argument("--pretrain-data", nargs="?", const=DEFAULT_PRETRAIN_CORPUS, metavar="PATH",
                       help="first train on this general corpus (default: ../shared/data/russian_literature.jsonl),"
                            " into <out>/pretrain, then on --data from those weights")
    stages.add_argument("--pretrain-share", type=fraction, default=0.5,
                        help="the first stage's share of --steps / --cpu-budget / --time-limit")
    stages.add_argument("--pretrain-epochs", type=positive, default=1.0,
                        help="passes over the general corpus when the budget is in epochs")
    stages.add_argument("--tokenizer-corpus", choices=TOKENIZER_CORPORA, default="both",
                        help="train the two-stage tokenizer on both corpora or on the jokes alone")
    p.add_argument("--ema-decay", type=fraction,
                   help="evaluate and ship an exponential moving average of the weights (e.g. 0.99)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    p.add_argument("--push-to-hub", metavar="REPO", help="push the result to REPO on revision = size, with a "
                   "transformers export in its transformers/ subfolder where the architecture allows one")
    p.add_argument("--no-transformers-export", action="store_true", help="push our files only")
    p.add_argument("--no-progress", action="store_true")
    return p


def _said_plainly(prog: str, run: Callable[[], int]) -> int:
    """`run()`, with a missing or unreadable corpus or model said in one line (exit 2), not a traceback."""
    from .data import CorpusFormatError

    try:
        return run()
    except (FileNotFoundError, CorpusFormatError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2


def train_main(argv: list[str] | None = None) -> int:
    parser = _train_parser()
    args = parser.parse_args(argv)
    return _said_plainly("rujokes-train", lambda: _train(parser, args))


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .recipes import recipe
    from .stages import train_two_stage
    from .train import train

    overrides = {}
    for item in args.model_override:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--model-override expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare word such as rope
    overrides.update({k: v for k, v in (("position", args.position), ("attention", args.attention),
                                        ("dropout", args.dropout)) if v is not None})
    config = recipe(
        args.size, original=args.original_recipe, steps=args.steps, epochs=args.epochs,
        cpu_budget_s=args.cpu_budget_s, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        seq_len=args.seq_len, vocab_size=args.vocab_size, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed, time_limit_s=args.time_limit_s,
        keep_best=False if args.last_weights else None, init_from=args.init_from, ema_decay=args.ema_decay,
    )
    config.model_overrides.update(overrides)
    out = Path(args.out or f"runs/{args.size}")
    if args.pretrain_data:
        result = train_two_stage(config, args.pretrain_data, args.data, out, pretrain_share=args.pretrain_share,
                                 pretrain_epochs=args.pretrain_epochs, tokenizer_corpus=args.tokenizer_corpus,
                                 resume=args.resume, hub_dir=args.hub_dir, progress=not args.no_progress, cpu=args.cpu)
    else:
        result = train(config, args.data, out, resume=args.resume, hub_dir=args.hub_dir,
                       progress=not args.no_progress, cpu=args.cpu)
    print(json.dumps({"out": str(result.out_dir), "steps": result.steps, "tokens_seen": result.tokens_seen,
                      "wall_time_s": round(result.wall_time_s, 1), "selected_step": result.selected_step,
                      **result.final_eval}, ensure_ascii=False))
    if args.push_to_hub:
        export = not args.no_transformers_export and _exportable(result.model.config)
        url = result.model.push_to_hub(args.push_to_hub, revision=args.size, tokenizer=result.tokenizer,
                                       extra_files={n: out / n for n in ("README.md", "loss.png", "metrics.jsonl")},
                                       export_transformers=export)
        exported = " (with the transformers export in transformers/)" if export else ""
        print(f"pushed to {args.push_to_hub}@{args.size}{exported}: {url}")
    return 0


def _exportable(config) -> bool:
    from rujokes_model.export import ExportError, target_architecture

    try:
        target_architecture(config)
    except ExportError as error:
        print(f"not exported for transformers: {error}")
        return False
    return True


def eval_main(argv: list[str] | None = None) -> int:
    from rujokes_model.lowbit_weights import KINDS as LOWBIT_KINDS

    p = argparse.ArgumentParser(prog="rujokes-eval", description="Validation loss and bits per character.")
    p.add_argument("--model", required=True, help="model directory or Hub repo id")
    p.add_argument("--revision", help="Hub revision (nano/mini/small)")
    p.add_argument("--data", default=DEFAULT_CORPUS)
    p.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="which part of the corpus (the same hash split as training)")
    p.add_argument("--val-fraction", type=fraction, default=0.05)
    p.add_argument("--limit", type=at_least(1), help="evaluate only the first N jokes")
    p.add_argument("--cpu-weights", choices=LOWBIT_KINDS, default="fp32",
                   help="score the model as a CPU worker with CPU_BF16_SIZES / CPU_INT8_SIZES would run it")
    args = p.parse_args(argv)
    return _said_plainly("rujokes-eval", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM
    from rujokes_model.lowbit_weights import use_lowbit_weights

    from .data import CorpusFormatError, load_corpus, split_train_val
    from .evaluate import evaluate_texts

    model = TransformerForCausalLM.from_pretrained(args.model, revision=args.revision)
    if args.cpu_weights != "fp32":  # from_pretrained gives fp32, what the kernels take
        use_lowbit_weights(model, args.cpu_weights)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(args.model, revision=args.revision)
    texts = load_corpus(args.data)
    if args.split != "all":
        train_texts, val_texts = split_train_val(texts, args.val_fraction)
        texts = val_texts if args.split == "val" else train_texts
    texts = texts[: args.limit] if args.limit else texts
    if not texts:
        raise CorpusFormatError(args.data, None, f"no texts in its {args.split} split" if args.split != "all"
                                else "no texts in it")
    # Score with the context the model was trained on when the run recorded it (windows must match).
    seq_len = None
    train_config = Path(args.model) / "train_config.json"
    if train_config.is_file():
        seq_len = json.loads(train_config.read_text()).get("seq_len")
    result = evaluate_texts(model, tokenizer, texts, seq_len=seq_len)
    print(json.dumps({"model": args.model, "split": args.split, "jokes": len(texts), "cpu_weights": args.cpu_weights,
                      **result.to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
