"""What a user of README's main command gets: `rujokes run` with nothing configured but the bot token
(run by hand; prints figures).

    python benchmarks/serving_defaults.py [--concurrent 16] [--rounds 3] [--skip-cold]

One `rujokes run` process (embedded Redis, a worker and the bot, every setting at its default: the
default size, its weights format and the background compile) talks to the fake Telegram Bot API.
- **Start**: a `/joke` is sent the moment the process is spawned; the time to its finished joke, with
  empty compile and kernel caches (cold) and again with the caches the first start left (warm). The
  time until the worker logs that the compiled step is ready is printed too.
- **Latency**: once the step is compiled, `--concurrent` users send `/joke` at once, `--rounds` times;
  p50/p95 from each update to the message that shows the finished joke.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bot_drill import PROMPTS, Users, percentile  # first: it puts the repository on sys.path

from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, stop_process, wait_until  # noqa: E402
from tests.fake_bot_api import FakeBotAPI  # noqa: E402

COMPILED = re.compile(r"(\w+): decode step compiled (?:\([^)]*\) )?in ([\d.]+) s")


def run_env(api: FakeBotAPI, state: Path, caches: Path, overrides: list[str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("REDIS_", "MODEL_", "WORKER_", "BOT_", "TELEGRAM_", "CPU_", "COMPILE_",
                                 "DEFAULT_", "TORCH"))}
    return {**keep, "BOT_TOKEN": BOT_TOKEN, "TELEGRAM_API_BASE": api.base_url, "REDIS_URL": "",
            "REDIS_DATA_DIR": str(state / "redis"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
            "RUJOKES_KERNEL_DIR": str(caches / "kernels"), "RATE_LIMIT_PER_MINUTE": "100000",
            "RATE_LIMIT_BURST": "10000", **dict(item.split("=", 1) for item in overrides)}


def start(api: FakeBotAPI, state: Path, caches: Path, overrides: list[str]) -> tuple[subprocess.Popen, Path, float]:
    log_path = state / "run.log"
    executable = shutil.which("rujokes", path=str(Path(sys.executable).parent)) or "rujokes"
    spawned = time.time()
    process = subprocess.Popen([executable, "run"], env=run_env(api, state, caches, overrides), cwd=state,
                               stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    return process, log_path, spawned


def one_start(label: str, caches: Path, args: argparse.Namespace) -> dict:
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    state = Path(tempfile.mkdtemp(prefix=f"rj-serving-{label}-"))
    process, log_path, spawned = start(api, state, caches, args.env)
    try:
        first = Users(api, 1, 1)
        first.run(until=time.time() + args.timeout)  # the first ask goes out at once: it waits in getUpdates
        [ask] = first.asks.values()
        if not ask.jokes:
            raise RuntimeError(f"no first joke within {args.timeout} s; log: {log_path}")
        row = {"label": label, "first_joke_s": ask.jokes[0] - spawned}
        if "COMPILE_DECODE=false" not in args.env:  # the latency rounds measure the steady state
            wait_until(lambda: COMPILED.search(log_path.read_text(errors="replace")) or process.poll() is not None,
                       args.timeout, "the compiled step")
        compiled = COMPILED.findall(log_path.read_text(errors="replace"))
        row["compiled"] = ", ".join(f"{size} {seconds} s" for size, seconds in compiled)
        row["size"] = (re.findall(r"size=(\w+)", log_path.read_text(errors="replace")) or ["?"])[-1]
        if not args.skip_latency:
            row["latency"] = latency(api, args)
        return row
    finally:
        stop_process(process, timeout=60)
        api.stop()


def latency(api: FakeBotAPI, args: argparse.Namespace) -> dict:
    latencies, lost = [], 0
    for _ in range(args.rounds):  # the same users again: each round waits for the last one's jokes
        users = Users(api, args.concurrent, 1)
        users.run(until=time.time() + args.timeout)
        summary = users.summary()
        lost += summary["lost"]
        latencies += [ask.jokes[0] - ask.sent_at for ask in users.asks.values() if ask.jokes]
    return {"requests": args.concurrent * args.rounds, "jokes": len(latencies), "lost": lost,
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "max_s": max(latencies, default=float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--skip-cold", action="store_true", help="only the warm start (caches kept in --caches)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting to change from its default (repeatable), e.g. WORKER_BATCH_SIZE=8")
    parser.add_argument("--caches", help="compile/kernel cache directory to reuse (default: a fresh one)")
    args = parser.parse_args()
    caches = Path(args.caches or tempfile.mkdtemp(prefix="rj-caches-"))
    print(f"prompts {PROMPTS[0]!r}…, {args.concurrent} concurrent × {args.rounds} rounds, caches {caches}, "
          f"settings changed: {', '.join(args.env) or 'none'}")
    rows = [] if args.skip_cold else [one_start("cold", caches, args)]
    rows.append(one_start("warm", caches, args))
    print("\n| start | first joke after spawn, s | compiled step ready (worker's clock) | size | requests | "
          "p50 s | p95 s | max s | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        lat, nan = row.get("latency") or {}, float("nan")
        print(f"| {row['label']} | {row['first_joke_s']:.1f} | {row['compiled'] or '—'} | {row['size']} | "
              f"{lat.get('requests', '—')} | {lat.get('p50_s', nan):.2f} | {lat.get('p95_s', nan):.2f} "
              f"| {lat.get('max_s', nan):.2f} | {lat.get('lost', '—')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
