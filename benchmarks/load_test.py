"""Load test of the whole bot stack: simulated users ask for jokes through the fake Telegram Bot API
(run by hand; prints figures; exits 1 if a request is lost, duplicated or not answered with a joke).

    python benchmarks/load_test.py [--users 8] [--requests-per-user 2] [--workers 1 2]
                                   [--max-new-tokens 16] [--model DIR]

Each user sends `/joke …` in a private chat, waits for the finished joke (the message with the
🔁/👍/👎 buttons), and asks again. The real `rujokes-bot` (rate limit raised) and 1 or 2 real CPU
`rujokes-worker`s serve them over a real Redis; by default a tiny random model (tests/model_helpers.py).
Latency is from injecting the update to the Bot API call that shows the finished joke.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bot_drill import DrillStack, Users, tiny_model


def run_scenario(n_workers: int, args: argparse.Namespace, model_dir: Path, log_dir: Path) -> dict:
    stack = DrillStack.create(log_dir, model_dir, args.max_new_tokens)
    try:
        stack.start(n_workers)
        users = Users(stack.api, args.users, args.requests_per_user)
        users.run(until=time.time() + args.timeout)
        users.sending = False
        settle_until = time.time() + args.settle  # a duplicate would arrive after the first joke
        while time.time() < settle_until:
            users.step()
            time.sleep(0.05)
        summary = users.summary()
    finally:
        stack.close()
    wall = summary["last_joke"] - summary["first_sent"]
    summary["wall_s"] = wall
    summary["requests_per_s"] = summary["jokes"] / wall if wall > 0 else 0.0
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests-per-user", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", choices=[1, 2], default=[1, 2],
                        help="worker counts to run, one scenario each")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--model", help="model directory for MODEL_NANO (default: a tiny random model)")
    parser.add_argument("--timeout", type=float, default=150, help="seconds a scenario may take")
    parser.add_argument("--settle", type=float, default=3, help="seconds to watch for duplicates at the end")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rj-load-"))
    failed = True  # until the figures say otherwise: a crash keeps the logs too
    try:
        model_dir = Path(args.model) if args.model else tiny_model(tmp)
        rows = {}
        for n_workers in args.workers:
            rows[n_workers] = run_scenario(n_workers, args, model_dir, tmp / f"workers-{n_workers}")
            row = rows[n_workers]
            print(f"{n_workers} worker(s): {row['jokes']}/{row['asked']} jokes in {row['wall_s']:.1f}s", flush=True)
        print(f"\n{args.users} users × {args.requests_per_user} /joke in private chats, ≤ {args.max_new_tokens} new "
              f"tokens, model {'tiny random (make_tiny_model_dir)' if not args.model else args.model}, CPU workers\n")
        print("| workers | requests | jokes | requests/s | p50 s | p95 s | p99 s | lost | duplicates | not a joke |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        failed = False
        for n_workers, row in rows.items():
            print(f"| {n_workers} | {row['asked']} | {row['jokes']} | {row['requests_per_s']:.2f} | "
                  f"{row['p50_s']:.2f} | {row['p95_s']:.2f} | {row['p99_s']:.2f} | {row['lost']} | "
                  f"{row['duplicates']} | {row['other']} |")
            expected = args.users * args.requests_per_user
            if row["lost"] or row["duplicates"] or row["other"] or row["jokes"] != expected:
                failed = True
                print(f"FAILED with {n_workers} worker(s): replies that are not jokes: {row['other_texts']}",
                      file=sys.stderr)
    finally:
        if failed:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
