"""Soak: a steady stream of jokes through the real stack for a long time, watching for growth (run by hand;
prints a table per minute and the verdict, writes a PNG; exits 1 when a bound is broken).

    python benchmarks/soak.py [--minutes 30] [--rate 5] [--model rujokes_model/weights/nano] [--png soak.png]
    python benchmarks/soak.py --size mini --model rujokes_model/weights/mini    # as `rujokes run` serves it

Open-loop arrivals at `--rate` requests a second (half private chats, half groups; new users all the time,
as in real life) against the real bot, two real workers and a real Redis (AOF everysec). Every minute:
the RSS of the bot, each worker and Redis, Redis' used memory and key count, and p50/p95/p99 of the
answers that came that minute. After `--warmup-min`, the bounds checked are:

    RSS of each process       grows by at most max(--rss-slack-mb, 10 %) from the first minute after warm-up
    Redis keys                at most --keys-per-request × the requests of the last TTL window (bounded by TTLs),
                              and every kind of key that grows with traffic has a TTL (a census at the end)
    p95 latency               the last minute's is at most 2 × the first minute's after warm-up (flat)
    lost                      0 (every request answered by the end)
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bot_drill import PROMPTS, DrillStack, Users, percentile, tiny_model


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample(stack: DrillStack) -> dict[str, float]:
    figures = {"bot": rss_mb(stack.bot.pid)}
    figures.update({f"worker {w}": rss_mb(p.pid) for w, p in sorted(stack.workers.items())})
    figures["redis"] = rss_mb(stack.redis_server._process.pid)
    with stack.redis() as client:
        figures["redis used MB"] = int(client.info("memory")["used_memory"]) / 2**20
        figures["keys"] = client.dbsize()
    return figures


def key_census(stack: DrillStack) -> dict[str, tuple[int, int]]:
    """Key kind (the key with its ids as #) -> (how many, the longest TTL among them in s; -1: one has none)."""
    census: dict[str, tuple[int, int]] = {}
    with stack.redis() as client:
        for key in client.scan_iter(f"{stack.prefix}*", count=1000):
            kind = re.sub(r"[0-9a-f]{16,}|-?\d+", "#", key.removeprefix(stack.prefix))
            count, longest = census.get(kind, (0, 0))
            ttl = client.ttl(key)
            census[kind] = (count + 1, -1 if ttl == -1 or longest == -1 else max(longest, ttl))
    return census


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=5, help="requests per second")
    parser.add_argument("--model", help="model directory (default: a tiny random model)")
    parser.add_argument("--size", choices=["nano", "mini"], default="nano",
                        help="serve --model as this size; mini as `rujokes run` serves it (int8, compiled step)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--warmup-min", type=float, default=3)
    parser.add_argument("--rss-slack-mb", type=float, default=30)
    parser.add_argument("--keys-per-request", type=float, default=12)
    parser.add_argument("--png", default="soak.png")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rj-soak-"))
    stack = None
    minutes: list[dict] = []
    try:
        model_dir = Path(args.model) if args.model else tiny_model(tmp)
        stack = DrillStack.create(tmp / "stack", model_dir, args.max_new_tokens, redis_fsync="everysec")
        if args.size == "mini":
            stack.serve_mini_as_shipped(model_dir).start(2).wait_for_compiled_steps()
        else:
            stack.start(2)
        users = Users(stack.api, 0, requests_per_user=None)
        users.sending = False  # open loop: arrivals come from the clock below, not from answers
        started = time.time()
        next_arrival, next_minute, n = started, started + 60, 0
        while time.time() < started + args.minutes * 60:
            now = time.time()
            while next_arrival <= now:
                user = 30_000_000 + n
                group = -(2_000_000_000_000 + n) if n % 2 else None
                users.ask_once(user, f"/joke {PROMPTS[n % len(PROMPTS)]}", group)
                n, next_arrival = n + 1, next_arrival + 1 / args.rate
            users.step()
            if now >= next_minute:
                window = [a for a in users.asks.values() if a.jokes and next_minute - 60 <= a.jokes[0] < next_minute]
                latencies = [a.jokes[0] - a.sent_at for a in window]
                row = {"minute": len(minutes) + 1, "answered": len(window), "p50": percentile(latencies, 0.5),
                       "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99), **sample(stack)}
                minutes.append(row)
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
                next_minute += 60
            time.sleep(0.01)
        deadline = time.time() + 240
        while time.time() < deadline and not all(a.answered for a in users.asks.values()):
            users.step()
            time.sleep(0.05)
        total = users.summary()
        census = key_census(stack)
    finally:
        if stack is not None:
            stack.close()

    warm = [row for row in minutes if row["minute"] > args.warmup_min]
    failures = []
    if warm:
        first, last = warm[0], warm[-1]
        for name in [k for k in first if k == "bot" or k.startswith("worker") or k == "redis"]:
            bound = first[name] + max(args.rss_slack_mb, 0.1 * first[name])
            if max(row[name] for row in warm) > bound:
                failures.append(f"{name} RSS grew past {bound:.0f} MB: {[round(r[name]) for r in warm]}")
        key_bound = args.keys_per_request * args.rate * 60 * max(1.0, min(args.minutes, 60))
        if max(row["keys"] for row in warm) > key_bound:
            failures.append(f"Redis keys past {key_bound:.0f}")
        if last["p95"] > 2 * first["p95"]:
            failures.append(f"p95 rose from {first['p95']:.2f} s to {last['p95']:.2f} s")
    if total["lost"]:
        failures.append(f"{total['lost']} requests lost")
    # A kind with no TTL must not grow with traffic: fixed keys (streams, registries, totals) stay few.
    untimed = [kind for kind, (count, longest) in census.items() if longest == -1 and count > 10]
    if untimed:
        failures.append(f"keys without a TTL that grow with traffic: {untimed}")

    columns = [k for k in minutes[0] if k != "minute"] if minutes else []
    print(f"\n{args.minutes:g} min at {args.rate:g} requests/s, model {args.model or 'tiny random'}, "
          f"{total['asked']} requests: {total['jokes']} jokes, {total['other']} told, {total['lost']} lost, "
          f"{total['duplicates']} doubled\n")
    print("| minute | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in minutes:
        print(f"| {row['minute']} | " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                                  for c in columns) + " |")
    print(f"\nRedis keys at the end, by kind ({sum(c for c, _ in census.values())} keys, "
          f"{sum(c for c, _ in census.values()) / max(1, total['asked']):.1f} per request):\n")
    print("| kind | keys | longest TTL |")
    print("|---|---|---|")
    for kind, (count, longest) in sorted(census.items(), key=lambda item: -item[1][0]):
        print(f"| `{kind}` | {count} | {'none' if longest == -1 else f'{longest / 3600:.1f} h'} |")
    if minutes:
        plot(minutes, Path(args.png))
        print(f"\nplot: {args.png}")
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "bounds held"), file=sys.stderr)
    if failures:
        print(f"logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def plot(minutes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, latency) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    x = [row["minute"] for row in minutes]
    for name in [k for k in minutes[0] if k == "bot" or k.startswith("worker") or k == "redis"]:
        memory.plot(x, [row[name] for row in minutes], label=name)
    memory.set_ylabel("RSS, MB")
    memory.legend(fontsize=8)
    latency.plot(x, [row["p95"] for row in minutes], label="p95")
    latency.plot(x, [row["p50"] for row in minutes], label="p50")
    latency.set_ylabel("latency, s")
    latency.set_xlabel("minute")
    latency.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


if __name__ == "__main__":
    sys.exit(main())
