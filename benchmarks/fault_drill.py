"""Fault drill of the whole bot stack under load (run by hand; prints figures; exits 1 if a request
is lost or duplicated, or a fault's requests never all get their jokes).

    python benchmarks/fault_drill.py [--users 8] [--max-new-tokens 16] [--model DIR]

Simulated users keep asking for jokes (half in private chats, half in groups, where a placeholder is
edited into the joke) while, one after another:

1. a worker is killed with SIGKILL mid-batch: the second worker reclaims its requests (CLAIM_IDLE_MS=3000);
2. Redis (AOF on, fsync always) is killed with SIGKILL and restarted on the same data;
3. Telegram answers 429 (retry_after=1) to the next sendMessage and editMessageText calls.

For each fault: requests in flight at that moment, seconds to the next delivered joke, and seconds
until every request in flight at the fault got its joke. Then the users stop, every request is
waited for, and the totals are checked: lost = 0, duplicates = 0. Replies that are not jokes (a
refusal, an apology) are counted and printed as a warning: the user was told, nothing was lost.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bot_drill import DrillStack, Users, tiny_model


def run_until(users: Users, condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        users.step()
        if condition():
            return True
        time.sleep(0.02)
    return False


def recovery(users: Users, name: str, at: float, in_flight: list, timeout: float, quiet_s: float) -> dict:
    """Wait until everything in flight at the fault was answered, then let the load run `quiet_s` more."""
    run_until(users, lambda: all(ask.answered for ask in in_flight), timeout)
    next_joke = next((t for t in users.joke_times() if t > at), None)
    answered = [ask.answered_at for ask in in_flight if ask.answered_at is not None]
    row = {"fault": name, "in_flight": len(in_flight),
           "next_joke_s": None if next_joke is None else next_joke - at,
           "cleared_s": (max(answered) - at if answered else 0.0) if len(answered) == len(in_flight) else None,
           "not_jokes": sum(1 for ask in in_flight if ask.other and not ask.jokes)}
    run_until(users, lambda: False, quiet_s)
    print(f"{name}: {row}", flush=True)
    return row


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--model", help="model directory for MODEL_NANO (default: a tiny random model)")
    parser.add_argument("--warmup-s", type=float, default=3, help="load before the first fault")
    parser.add_argument("--quiet-s", type=float, default=3, help="load between recovering and the next fault")
    parser.add_argument("--recovery-timeout-s", type=float, default=60)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rj-fault-"))
    failed = True  # until the figures say otherwise: a crash keeps the logs too
    stack = None
    try:
        model_dir = Path(args.model) if args.model else tiny_model(tmp)
        stack = DrillStack.create(tmp / "stack", model_dir, args.max_new_tokens).start(2)
        users = Users(stack.api, args.users, requests_per_user=None, group_every=2)
        run_until(users, lambda: False, args.warmup_s)
        faults = []

        # 1. a worker dies mid-batch: wait for one that holds claimed requests
        busy: dict[str, int] = {}

        def a_worker_is_busy() -> bool:
            busy.clear()
            busy.update({worker: n for worker, n in stack.in_flight_by_worker().items() if worker in stack.workers})
            return any(busy.values())

        run_until(users, a_worker_is_busy, 20)
        victim = max(stack.workers, key=lambda worker_id: busy.get(worker_id, 0))
        at = time.time()
        in_flight = users.outstanding_at(at)
        stack.kill_worker(victim)
        faults.append(recovery(users, f"kill -9 worker {victim} ({busy.get(victim, 0)} claimed)", at, in_flight,
                               args.recovery_timeout_s, args.quiet_s))

        # 2. Redis dies and comes back on its AOF
        at = time.time()
        in_flight = users.outstanding_at(at)
        stack.redis_server.restart(kill=True)
        down_s = time.time() - at
        faults.append(recovery(users, f"Redis SIGKILL + restart (down {down_s:.2f}s)", at, in_flight,
                               args.recovery_timeout_s, args.quiet_s))

        # 3. Telegram's flood control
        at = time.time()
        in_flight = users.outstanding_at(at)
        for method in ("sendMessage", "editMessageText"):
            stack.api.fail_next(method, error_code=429, retry_after=1, times=2)
        faults.append(recovery(users, "429 × 2 on sendMessage and on editMessageText", at, in_flight,
                               args.recovery_timeout_s, args.quiet_s))

        users.sending = False
        run_until(users, users.done, args.recovery_timeout_s)
        run_until(users, lambda: False, 3)  # a duplicate would arrive after the first joke
        total = users.summary()
        retry_afters = stack.bot_metric("rujokes_telegram_retry_afters_total")
    except BaseException:
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.close()

    print(f"\n{args.users} users asking in a loop (half in private chats, half in groups), ≤ {args.max_new_tokens} "
          f"new tokens, model {args.model or 'tiny random (tests/model_helpers.py)'}, 2 CPU workers\n")
    print("| fault | requests in flight | next joke after, s | all in flight answered after, s | of them not a joke |")
    print("|---|---|---|---|---|")
    for row in faults:
        print(f"| {row['fault']} | {row['in_flight']} | {seconds(row['next_joke_s'])} | {seconds(row['cleared_s'])} | "
              f"{row['not_jokes']} |")
    print("\n| requests | jokes | lost | duplicates | not a joke | p50 s | p95 s | p99 s | bot: 429s counted |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {total['asked']} | {total['jokes']} | {total['lost']} | {total['duplicates']} | {total['other']} | "
          f"{total['p50_s']:.2f} | {total['p95_s']:.2f} | {total['p99_s']:.2f} | {retry_afters:.0f} |")
    failed = bool(total["lost"] or total["duplicates"] or any(row["cleared_s"] is None for row in faults))
    if total["other"]:
        print(f"WARNING: {total['other']} replies were not jokes: {total['other_texts']}", file=sys.stderr)
    if failed or total["other"]:
        print(f"{'FAILED: ' if failed else ''}logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
