"""`rujokes`: the offline demo (`rujokes joke …`, straight from the model, no queue) and
`rujokes run` (embedded Redis + worker + bot in one command, from `.env`)."""
from __future__ import annotations

import argparse
import sys
import warnings

from rujokes_model.cli_args import at_least, device, number_in
from rujokes_model.config import SIZES


def _joke(args: argparse.Namespace) -> int:
    import torch

    from bot.worker.loading import load_source, resolve_device
    from rujokes_model.config import cpu_weights_for
    from rujokes_model.serving import ServingModel, speed_up

    source = args.model or "bundled"
    try:
        loaded = load_source(args.size, source, resolve_device(args.device))
    except (FileNotFoundError, ValueError) as error:
        print(f"rujokes: {error}", file=sys.stderr)
        return 2
    # The worker's weights format; no compiled step: one command's few jokes are done before it would be.
    speed_up(loaded.model, cpu_weights=cpu_weights_for(loaded.model.config), compile=False, name=args.size)
    n = args.n
    if args.temperature == 0 and n > 1:  # greedy decoding writes one joke, however many times it is asked
        print(f"rujokes: --temperature 0 is greedy: its {n} jokes would be one joke, printed once", file=sys.stderr)
        n = 1
    generator = torch.Generator(device=loaded.model.device)
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    with warnings.catch_warnings(record=True) as notes:  # e.g. a prompt longer than the context: one line
        warnings.simplefilter("always")
        jokes = ServingModel(loaded.model, loaded.tokenizer).complete(
            " ".join(args.prompt).strip(), args.max_new_tokens, n=n, top_k=args.top_k,
            temperature=args.temperature, generator=generator)  # ended as the bot ends them
    for note in notes:
        print(f"rujokes: {note.message}", file=sys.stderr)
    print("\n\n* * *\n\n".join(jokes))
    return 0


def _run(args: argparse.Namespace) -> int:
    from bot.common.launcher import run_stack
    return run_stack(with_bot=not args.no_bot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rujokes", description="Russian jokes from small Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    joke = sub.add_parser("joke", help="print jokes straight from the model (offline demo)")
    joke.add_argument("prompt", nargs="*", help="the joke's opening, e.g. «Штирлиц пришел домой»")
    joke.add_argument("--size", choices=SIZES, default="mini", help="model size (default: mini, the best shipped)")
    joke.add_argument("--model", help="model directory or hub:owner/repo@revision (default: bundled weights)")
    joke.add_argument("-n", type=at_least(1), default=1, help="how many jokes")
    joke.add_argument("--top-k", type=at_least(0), default=10, help="sample from the k likeliest tokens (0: all)")
    joke.add_argument("--temperature", type=number_in(0), default=1.0, help="0: greedy")
    joke.add_argument("--max-new-tokens", type=at_least(1), default=150)
    joke.add_argument("--seed", type=int)
    joke.add_argument("--device", type=device, default="auto", help="auto (a CUDA GPU if any), cpu, cuda, cuda:N, mps")
    joke.set_defaults(handler=_joke)
    run = sub.add_parser("run", help="run the bot stack: embedded Redis (if REDIS_URL is empty) + worker + bot")
    run.add_argument("--no-bot", action="store_true", help="only Redis + worker")
    run.set_defaults(handler=_run)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
