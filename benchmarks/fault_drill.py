"""Fault matrix of the whole bot stack under load (run by hand; prints figures; exits 1 if a request is lost
or answered twice where that is avoidable, or a fault's requests never all get an answer).

    python benchmarks/fault_drill.py [--users 32] [--model rujokes_model/weights/nano] [--fault-s 30]
                                     [--only NAME ...]

Simulated users keep asking for jokes (a third in groups, where a placeholder is edited into the joke, a
third in private chats, a third in inline mode) against the real bot, two real workers and a real Redis
with the shipped fsync policy (deploy/redis.conf: appendfsync everysec), while, one at a time:

    worker-kill     a worker is killed with SIGKILL mid-batch: the other reclaims its requests
    worker-broken   a third worker starts with a model it cannot load: it exits saying why; nothing changes
    redis-kill      Redis is killed with SIGKILL and restarted on its AOF; the bot re-submits what it knows
    redis-away      Redis is stopped for --fault-s seconds, then started again on its AOF
    redis-readonly  Redis refuses writes for --fault-s seconds (NOREPLICAS, as a replica-less primary does)
    disk-full       the disk under Redis' AOF is full for --fault-s seconds (a tmpfs of its own, filled; where
                    nothing can be mounted, its files are capped): Redis refuses writes (MISCONF)
    api-429         Telegram answers 429 (retry_after=1) to the next sendMessage and editMessageText calls
    api-5xx         the Bot API answers 502 to every call (getUpdates too, in each api- row) for --fault-s seconds
    api-reset       the Bot API drops every connection for --fault-s seconds
    api-slow        the Bot API answers every call late but within the bot's timeout, for --fault-s seconds
    api-hang        the Bot API does every call but answers only after the bot's timeout, for --fault-s seconds
                    (within a send's patience: bot/telegram/outbox.py's SEND_PATIENCE)
    api-hang-long   the same, answering past a send's patience too: a send that timed out may have been made
    bot-kill        the serving bot is killed with SIGKILL mid-stream and started again, as its supervisor would;
                    with --standbys (1 by default, as deploy/ runs it) a standby takes over meanwhile (Telegram
                    re-delivers what the dead one did not confirm)
    poison          one request makes the model raise on every attempt: its batch mates are answered, it is
                    dead-lettered after MAX_DELIVERIES with an apology, the workers keep serving

Each row: requests asked during the fault (or in flight when it began, unless an earlier row counted them),
how many got a joke, a message that is not a joke (a refusal, an apology: the user was told), none (lost),
or a joke in two messages (doubled: an edit of the same message again is none); an inline query left
unanswered past Telegram's answer window (bot_drill.INLINE_WINDOW_S) is "inline expired", not lost: Telegram
itself would take no answer then, and its user types it again. Then the seconds from the
fault's start until every one of them was answered, and from its end (the recovery, against the target
CLAIM_IDLE + one batch). Then the users stop, every request is waited for, and the totals are checked.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot_drill import ROOT, Ask, DrillStack, Users, tiny_model

from bot.telegram.outbox import SEND_PATIENCE

POISON = "ЯДОВИТЫЙ АНЕКДОТ"
# The faults whose doubles are unavoidable: a send "Telegram" did but answered later than even a send waits
# looks failed to the bot, and retried it shows twice (an edited placeholder never does); a bot killed between
# its send and Telegram's answer cannot know that the send was made, and its successor sends again. No Bot API
# call tells.
DOUBLES_POSSIBLE = {"api-hang-long", "bot-kill"}


def run_until(users: Users, condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        users.step()
        if condition():
            return True
        time.sleep(0.02)
    return False


@dataclass
class Row:
    name: str
    what: str
    started: float
    ended: float = 0.0
    asks: list[Ask] = field(default_factory=list)
    cleared_s: float | None = None    # from the fault's start until all its asks were answered
    recovered_s: float | None = None  # from the fault's end until then

    def figures(self) -> dict:
        return {"asked": len(self.asks), "jokes": sum(1 for a in self.asks if a.jokes),
                "told": sum(1 for a in self.asks if a.other and not a.jokes),
                "lost": sum(1 for a in self.asks if not a.settled),
                "doubled": sum(1 for a in self.asks if len(a.jokes) > 1),
                "expired": sum(1 for a in self.asks if a.expired)}


class Drill:
    def __init__(self, stack: DrillStack, users: Users, args: argparse.Namespace) -> None:
        self.stack, self.users, self.args = stack, users, args
        self.rows: list[Row] = []
        self._counted: set[int] = set()  # asks an earlier row counted (by id)

    def load(self, seconds: float) -> None:
        run_until(self.users, lambda: False, seconds)

    def fault(self, name: str, what: str, inject: Callable[[], None], heal: Callable[[], None] | None = None,
              duration_s: float = 0.0) -> Row:
        row = Row(name, what, time.time())
        in_flight = [a for a in self.users.outstanding_at(row.started) if id(a) not in self._counted]
        inject()
        self.load(duration_s)
        if heal is not None:
            heal()
        row.ended = time.time()
        row.asks = in_flight + [a for a in self.users.asks.values() if row.started < a.sent_at <= row.ended
                                and a not in in_flight]
        self._counted.update(id(a) for a in row.asks)
        run_until(self.users, lambda: all(a.settled for a in row.asks), self.args.recovery_timeout_s)
        answered = [a.answered_at for a in row.asks if a.answered_at is not None]
        if all(a.settled for a in row.asks):
            last = max(answered, default=row.started)
            row.cleared_s, row.recovered_s = last - row.started, max(0.0, last - row.ended)
        self.load(self.args.quiet_s)
        print(f"{name}: {what}: {row.figures()}, all answered after {row.cleared_s} (the fault's end + "
              f"{row.recovered_s})", flush=True)
        self.rows.append(row)
        return row

    # -- the faults ------------------------------------------------------------------------------------

    def worker_kill(self) -> None:
        busy: dict[str, int] = {}

        def a_worker_is_busy() -> bool:
            busy.clear()
            busy.update({w: n for w, n in self.stack.in_flight_by_worker().items() if w in self.stack.workers})
            return any(busy.values())

        run_until(self.users, a_worker_is_busy, 20)
        victim = max(self.stack.workers, key=lambda worker_id: busy.get(worker_id, 0))
        theirs: dict[str, float] = {}
        watching: list[threading.Thread] = []

        def kill() -> None:  # and time how soon the survivor answers the victim's own requests
            claimed = self.stack.claimed_by(victim)
            self.stack.kill_worker(victim)
            killed, theirs["n"] = time.time(), len(claimed)

            def watch() -> None:
                answered = self.stack.answered_at(claimed, self.args.recovery_timeout_s)
                if answered is not None:
                    theirs["after_s"] = answered - killed

            watching.append(threading.Thread(target=watch))
            watching[0].start()

        row = self.fault("worker-kill", f"kill -9 worker {victim} ({busy.get(victim, 0)} claimed)", kill)
        for thread in watching:
            thread.join()
        # The target's part; the row's other asks also wait in the lone survivor's queue.
        if theirs.get("n") and "after_s" in theirs:
            row.what += f"; its {theirs['n']:.0f} answered {theirs['after_s']:.1f} s after the kill"
            print(f"worker-kill: {row.what}", flush=True)
        self.stack.start_worker(victim)

    def worker_broken(self) -> None:
        broken: dict[str, subprocess.Popen] = {}

        def start() -> None:
            broken["w"] = self.stack.start_worker("w-broken", MODEL_NANO=str(self.args.tmp / "no-such-model"))

        row = self.fault("worker-broken", "a worker that cannot load its model", start, duration_s=10)
        process = self.stack.workers.pop("w-broken")
        if process.poll() is None:  # it should have given up by itself
            process.kill()
            process.wait()
        log = (self.stack.log_dir / "worker-w-broken.log").read_text(errors="replace")
        said = next((line for line in log.splitlines() if "no-such-model" in line), "")
        row.what += f" (exit {process.poll()}: {said[-120:]!r})"

    def redis_kill(self) -> None:
        def kill() -> None:
            self.stack.redis_server.restart(kill=True)

        self.fault("redis-kill", "Redis SIGKILL + restart on its AOF", kill)

    def redis_away(self) -> None:
        self.fault("redis-away", f"Redis stopped for {self.args.fault_s:.0f} s", self.stack.redis_server.stop,
                   self.stack.redis_server.start, self.args.fault_s)

    def redis_readonly(self) -> None:
        def refuse(on: bool) -> Callable[[], None]:
            def set_it() -> None:
                with self.stack.redis() as client:  # writes refused as MISCONF/NOREPLICAS errors, reads served
                    client.config_set("min-replicas-to-write", 1 if on else 0)
            return set_it

        self.fault("redis-readonly", f"Redis refuses writes for {self.args.fault_s:.0f} s (as with a full disk)",
                   refuse(True), refuse(False), self.args.fault_s)

    def disk_full(self) -> None:
        how: list[str] = []
        self.fault("disk-full", f"Redis' disk full for {self.args.fault_s:.0f} s",
                   lambda: how.append(self.stack.fill_redis_disk(True)), lambda: self.stack.fill_redis_disk(False),
                   self.args.fault_s)
        self.rows[-1].what += f": {how[0]}"

    def api_429(self) -> None:
        def inject() -> None:
            for method in ("sendMessage", "editMessageText"):
                self.stack.api.fail_next(method, error_code=429, retry_after=1, times=2)

        self.fault("api-429", "429 × 2 on sendMessage and on editMessageText", inject, duration_s=2)

    def api(self, kind: str, what: str, name: str | None = None, **extra: float) -> None:
        def disrupt() -> None:  # every method, getUpdates too: an outage holds the users' updates back as well
            for method in ("*", "getUpdates"):
                self.stack.api.disrupt(method, kind, for_s=self.args.fault_s, **extra)

        self.fault(name or f"api-{kind}", what, disrupt, duration_s=self.args.fault_s)

    def bot_kill(self) -> None:
        def kill_and_restart() -> None:
            self.stack.start_bot(self.stack.kill_bot())

        # Mid-stream: with requests in the bot's hands (as worker-kill waits for a busy worker).
        with self.stack.redis() as client:
            run_until(self.users, lambda: client.zcard(f"{self.stack.prefix}bot:outstanding:due") >= 6, 20)

        standby = "; a standby takes over" if len(self.stack.bots) > 1 else ""
        self.fault("bot-kill", f"the bot SIGKILLed mid-stream and restarted{standby}", kill_and_restart)

    def poison(self) -> None:
        poisoned: list[Ask] = []

        def send() -> None:
            poisoned.append(self.users.ask_once(self.users.users[0].user_id + 100_000, f"/joke {POISON}"))

        row = self.fault("poison", "a request that makes the model raise every time", send, duration_s=5)
        told = poisoned[0].other[:1]
        row.what += f" (it got: {told[0][:40]!r})" if told else " (it got nothing)"


def markdown(rows: list[Row]) -> str:
    lines = ["| fault | what | asked | jokes | told (not a joke) | inline expired | lost | doubled "
             "| all answered after, s | after the fault's end, s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        f = row.figures()
        cleared = "never" if row.cleared_s is None else f"{row.cleared_s:.1f}"
        recovered = "never" if row.recovered_s is None else f"{row.recovered_s:.1f}"
        lines.append(f"| {row.name} | {row.what} | {f['asked']} | {f['jokes']} | {f['told']} | {f['expired']} | "
                     f"{f['lost']} | {f['doubled']} | {cleared} | {recovered} |")
    return "\n".join(lines)


FAULTS = ["worker-kill", "worker-broken", "redis-kill", "redis-away", "redis-readonly", "disk-full", "api-429",
          "api-5xx", "api-reset", "api-slow", "api-hang", "api-hang-long", "bot-kill",
          "poison"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model", help="model directory for --size (default: a tiny random nano)")
    parser.add_argument("--size", choices=["nano", "mini"], default="nano",
                        help="mini: served as by default (int8 weights, compiled step); needs --model")
    parser.add_argument("--fault-s", type=float, default=30, help="how long the timed faults last")
    parser.add_argument("--telegram-timeout-s", type=float, default=5, help="the bot's TELEGRAM_TIMEOUT_S")
    parser.add_argument("--warmup-s", type=float, default=5, help="load before the first fault")
    parser.add_argument("--quiet-s", type=float, default=3, help="load between recovering and the next fault")
    parser.add_argument("--recovery-timeout-s", type=float, default=180)
    parser.add_argument("--standbys", type=int, default=1,
                        help="hot standby bot processes beside the serving one (0: the bot-kill row waits for a start)")
    parser.add_argument("--think-s", type=float, default=0.0,
                        help="a user's mean pause between a joke and the next ask. Without one (the default, as in "
                             "every table in BENCHMARKS.md) 32 users keep the bot at its MESSAGES_PER_SECOND cap, so "
                             "a recovery includes the queue behind that cap")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs after a passing run too")
    parser.add_argument("--only", nargs="*", choices=FAULTS, help="these faults only (default: all, in order)")
    args = parser.parse_args()

    args.tmp = tmp = Path(tempfile.mkdtemp(prefix="rj-fault-"))
    failed = True  # until the figures say otherwise: a crash keeps the logs too
    stack = None
    try:
        model_dir = Path(args.model) if args.model else tiny_model(tmp)
        stack = DrillStack.create(tmp / "stack", model_dir, args.max_new_tokens, redis_fsync="everysec",
                                  redis_disk_mb=512,
                                  TELEGRAM_TIMEOUT_S=str(args.telegram_timeout_s), DELIVERY_RETRY_S="300",
                                  REQUEST_TIMEOUT_S="240", RESULT_GRACE_S="30")
        stack.worker_env.update(MAX_DELIVERIES="3", RUJOKES_DRILL_POISON=POISON, PYTHONPATH=os.pathsep.join(
            [str(ROOT / "benchmarks" / "fault_injection"), str(ROOT)]))
        if args.size == "mini":
            stack.serve_mini_as_shipped(model_dir)
        stack.start(2, standbys=args.standbys)
        if args.size == "mini":  # the faults hit compiled batches
            stack.wait_for_compiled_steps()
        users = Users(stack.api, args.users, requests_per_user=None, group_every=3, inline_every=2,
                      think_s=args.think_s)
        drill = Drill(stack, users, args)
        drill.load(args.warmup_s)
        long_hang_s = math.ceil(args.telegram_timeout_s * SEND_PATIENCE) + 2
        steps = {"worker-kill": drill.worker_kill, "worker-broken": drill.worker_broken,
                 "redis-kill": drill.redis_kill, "redis-away": drill.redis_away,
                 "redis-readonly": drill.redis_readonly, "disk-full": drill.disk_full, "api-429": drill.api_429,
                 "api-5xx": lambda: drill.api("5xx", f"502 to every call for {args.fault_s:.0f} s"),
                 "api-reset": lambda: drill.api("reset", f"every connection dropped for {args.fault_s:.0f} s"),
                 "api-slow": lambda: drill.api("hang", f"every call answered after {0.8 * args.telegram_timeout_s:.0f}"
                                               f" s (within the bot's timeout) for {args.fault_s:.0f} s",
                                               hang_s=0.8 * args.telegram_timeout_s, name="api-slow"),
                 "api-hang": lambda: drill.api("hang", f"every call answered after {args.telegram_timeout_s + 2:.0f} s "
                                               f"(past the bot's timeout) for {args.fault_s:.0f} s",
                                               hang_s=args.telegram_timeout_s + 2),
                 "api-hang-long": lambda: drill.api(
                     "hang", f"every call answered after {long_hang_s:.0f} s (past a send's patience too) for "
                     f"{args.fault_s:.0f} s", hang_s=long_hang_s, name="api-hang-long"),
                 "bot-kill": drill.bot_kill, "poison": drill.poison}
        for name in args.only or FAULTS:
            steps[name]()
        users.sending = False
        run_until(users, users.done, args.recovery_timeout_s)
        run_until(users, lambda: False, 5)  # a duplicate would arrive after the first joke
        total = users.summary()
    except BaseException:
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.close()

    print(f"\n{args.users} users asking in a loop (a third each in groups, private chats and inline mode), "
          f"≤ {args.max_new_tokens} "
          f"new tokens, model {args.model or 'tiny random (tests/model_helpers.py)'}, 2 CPU workers, Redis AOF "
          f"everysec, TELEGRAM_TIMEOUT_S={args.telegram_timeout_s:g}\n")
    print(markdown(drill.rows))
    print("\n| requests | jokes | told | inline expired | lost | doubled | p50 s | p95 s | p99 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {total['asked']} | {total['jokes']} | {total['other']} | {total['expired']} | {total['lost']} | "
          f"{total['duplicates']} | "
          f"{total['p50_s']:.2f} | {total['p95_s']:.2f} | {total['p99_s']:.2f} |")
    print(f"\nnot jokes, by text: {total['other_texts']}")
    for ask in users.asks.values():
        if not ask.settled or len(ask.jokes) > 1:
            print(f"{'lost' if not ask.settled else 'doubled'}: chat {ask.chat_id} message {ask.message_id} "
                  f"asked at {ask.sent_at:.3f}, jokes at {[round(t, 3) for t in ask.jokes]}")
    avoidable = [row for row in drill.rows if row.figures()["doubled"] and row.name not in DOUBLES_POSSIBLE]
    failed = bool(total["lost"] or avoidable or any(row.cleared_s is None for row in drill.rows))
    if failed or args.keep_logs:
        print(f"{'FAILED: ' if failed else ''}logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
