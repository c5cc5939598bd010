"""What load_test.py and fault_drill.py share: the whole bot stack as real processes, and simulated
users who ask for jokes through the fake Telegram Bot API and time the answers.

The stack is the one the end-to-end tests run (tests/e2e_stack.py, tests/fake_bot_api.py,
tests/worker_process.py, tests/conftest.py's RedisServer): a real `rujokes-bot`, real
`rujokes-worker`s and a real redis-server, here with several workers and the rate limit raised.
"""
from __future__ import annotations

import errno
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.telegram.lease import RELEASED, lease_key  # noqa: E402
from bot.telegram.texts import RU as texts  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402
from tests.e2e_stack import (  # noqa: E402
    BOT_TOKEN,
    BOT_USERNAME,
    JOKE_BUTTONS,
    bot_env,
    free_port,
    start_bot,
    stop_process,
    wait_until,
)
from tests.fake_bot_api import Call, FakeBotAPI  # noqa: E402
from tests.worker_process import start_worker, worker_env  # noqa: E402

PROMPTS = ["Штирлиц пришел домой", "Вовочка спрашивает учительницу", "Приходит мужик к врачу",
           "Армянское радио спросили", "Жена говорит мужу", "Встречаются два программиста"]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: a latency that really occurred."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1] if ordered else float("nan")


def tiny_model(directory: Path) -> Path:
    from tests.model_helpers import make_tiny_model_dir  # torch: imported only when no --model is given

    return make_tiny_model_dir(directory / "tiny-nano", seed=1)


# -- the stack -------------------------------------------------------------------------------------


@dataclass
class DrillStack:
    api: FakeBotAPI
    redis_server: RedisServer
    prefix: str
    log_dir: Path
    bot_env: dict[str, str]
    worker_env: dict[str, str]
    bots: list[subprocess.Popen] = field(default_factory=list)  # the one holding the Telegram lease, and standbys
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    redis_disk: Path | None = None  # Redis' data directory when it is a small disk of its own (a tmpfs)

    @classmethod
    def create(cls, log_dir: Path, model_dir: Path, max_new_tokens: int, redis_fsync: str = "always",
               redis_disk_mb: int | None = None, **bot_settings: str) -> DrillStack:
        """`redis_disk_mb`: give Redis' data a tmpfs of this size, a disk the drill can fill (root only; where
        mounting is refused, Redis shares the machine's disk)."""
        redis_dir = log_dir / "redis"
        redis_disk = redis_dir if redis_disk_mb and mount_tmpfs(redis_dir, redis_disk_mb) else None
        redis_server = RedisServer(redis_dir, appendonly=True, fsync=redis_fsync).start()
        api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
        prefix = f"drill-{uuid.uuid4().hex[:6]}:"
        # Users here ask fast, and the fake Bot API has no group limit: neither limit may pace the drill.
        settings = dict(RATE_LIMIT_PER_MINUTE="100000", RATE_LIMIT_BURST="10000", GROUP_MESSAGES_PER_MINUTE="100000",
                        MAX_NEW_TOKENS=str(max_new_tokens), MAX_QUEUE="1000", REQUEST_TIMEOUT_S="120",
                        BOT_METRICS_PORT=str(free_port()), METRICS_HOST="127.0.0.1", LOG_FORMAT="json")
        settings.update(bot_settings)
        workers = worker_env(redis_server.url, prefix, model_dir, WORKER_BATCH_SIZE="8", CLAIM_IDLE_MS="3000",
                             HEARTBEAT_TTL_S="6", PARTIAL_INTERVAL_S="0.7")
        return cls(api, redis_server, prefix, log_dir, bot_env(api, redis_server.url, prefix, **settings), workers,
                   redis_disk=redis_disk)

    def serve_mini_as_shipped(self, model_dir: Path) -> DrillStack:
        """Workers serve `model_dir` as mini, the default size, the way `rujokes run` does: int8 weights
        (CPU_INT8_SIZES) and the compiled step. Before `start`; `wait_for_compiled_steps` after it."""
        self.worker_env.update(MODEL_NANO="none", MODEL_MINI=str(model_dir), DEFAULT_SIZE="mini",
                               COMPILE_DECODE="true")
        self.bot_env["DEFAULT_SIZE"] = "mini"
        return self

    def wait_for_compiled_steps(self, timeout_s: float = 600) -> None:
        """Until every worker logs that its batches use the compiled step (what a fault should hit)."""
        logs = [self.log_dir / f"worker-{w}.log" for w in self.workers]
        wait_until(lambda: all("decode step compiled" in log.read_text(errors="replace") for log in logs),
                   timeout_s, "the workers' compiled decode steps")

    def start(self, n_workers: int, standbys: int = 0) -> DrillStack:
        """The bot, `n_workers` workers and, once the bot serves, `standbys` more bot processes (hot standbys)."""
        self.bots.append(start_bot(self.bot_env, self.log_dir / "bot.log"))
        for number in range(1, n_workers + 1):
            self.start_worker(f"w{number}")
        wait_until(lambda: len(self.live_workers()) == n_workers or self._any_died(), 120, "the workers' heartbeats")
        wait_until(lambda: self.api.calls("setMyCommands") or self._any_died(), 60, "the bot to start")
        for number in range(standbys):
            log_path = self.log_dir / f"bot-standby-{number + 1}.log"
            self.bots.append(start_bot(self.bot_env, log_path))
            wait_until(lambda: "standby:" in log_path.read_text() or self._any_died(), 60, "a standby bot")
        if self._any_died():
            raise RuntimeError(f"a process died at start; logs in {self.log_dir}")
        return self

    @property
    def bot(self) -> subprocess.Popen:
        """The bot process that serves Telegram: the lease's holder (host:pid:nonce), else the first."""
        with self.redis() as client:
            holder = client.get(lease_key(self.prefix)) or ""
        pid = holder.removeprefix(RELEASED).split(":")[1] if holder.count(":") >= 2 else ""
        return next((bot for bot in self.bots if str(bot.pid) == pid), self.bots[0])

    def start_worker(self, worker_id: str, **env: str) -> subprocess.Popen:
        self.workers[worker_id] = start_worker({**self.worker_env, "WORKER_ID": worker_id, **env},
                                               self.log_dir / f"worker-{worker_id}.log")
        return self.workers[worker_id]

    def kill_bot(self) -> int:
        """SIGKILL the serving bot; returns how many setMyCommands calls there were (see `start_bot`)."""
        victim = self.bot
        menus = len(self.api.calls("setMyCommands"))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.bots.remove(victim)
        return menus

    def start_bot(self, menus: int) -> None:
        """Start a bot as its supervisor would after a death; return once one serves (menus set again since
        `menus` calls): this new one, or a standby that took over meanwhile (the new one is then a standby)."""
        new = start_bot(self.bot_env, self.log_dir / f"bot-{menus}.log")  # the killed one's log stays
        self.bots.append(new)
        wait_until(lambda: len(self.api.calls("setMyCommands")) > menus or new.poll() is not None, 60,
                   "a bot to serve")

    def kill_worker(self, worker_id: str) -> None:
        process = self.workers.pop(worker_id)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def _any_died(self) -> bool:
        return any(p.poll() is not None for p in [*self.bots, *self.workers.values()])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def live_workers(self) -> list[str]:
        with self.redis() as client:
            return sorted(key.rsplit(":", 1)[1] for key in client.scan_iter(f"{self.prefix}workers:*"))

    def in_flight_by_worker(self) -> dict[str, int]:
        """Claimed but unanswered requests per worker (the consumer group's pending list)."""
        counts: dict[str, int] = {}
        with self.redis() as client:
            for stream in (f"{self.prefix}requests:high", f"{self.prefix}requests:normal"):
                for consumer in client.xpending(stream, "workers").get("consumers", []):
                    counts[consumer["name"]] = counts.get(consumer["name"], 0) + int(consumer["pending"])
        return counts

    def claimed_by(self, worker_id: str) -> set[tuple[str, str]]:
        """(stream, entry id) of the requests `worker_id` claimed and has not answered."""
        with self.redis() as client:
            return {(stream, entry["message_id"])
                    for stream in (f"{self.prefix}requests:high", f"{self.prefix}requests:normal")
                    for entry in client.xpending_range(stream, "workers", "-", "+", 1000, consumername=worker_id)}

    def answered_at(self, claimed: set[tuple[str, str]], timeout_s: float) -> float | None:
        """Wait (in this thread) until none of `claimed` is pending any more (answered: acked and deleted);
        return when, or None after `timeout_s`."""
        deadline = time.time() + timeout_s
        with self.redis() as client:
            while time.time() < deadline:
                if not any(client.xpending_range(stream, "workers", entry_id, entry_id, 1)
                           for stream, entry_id in claimed):
                    return time.time()
                time.sleep(0.05)
        return None

    def bot_metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        port = self.bot_env["BOT_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        return sum(s.value for family in text_string_to_metric_families(body) for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def close(self) -> None:
        for bot in self.bots:
            stop_process(bot)
        for process in self.workers.values():
            stop_process(process)
        self.api.stop()
        self.redis_server.cleanup()
        if self.redis_disk is not None:
            subprocess.run(["umount", "--lazy", str(self.redis_disk)], check=False)

    def fill_redis_disk(self, full: bool) -> str:
        """Fill Redis' disk to the last byte (or free it again); says how."""
        if self.redis_disk is None:  # no disk of its own: its files may grow no more (RLIMIT_FSIZE)
            self.redis_server.disk_full(full)
            return "its files capped at their size (RLIMIT_FSIZE), as no disk of its own could be mounted"
        filler = self.redis_disk / "filler"
        if full:
            with filler.open("wb", buffering=0) as file:
                for chunk in (2**20, 4096, 1):  # until not one more byte fits
                    try:
                        while True:
                            file.write(b"\0" * chunk)
                    except OSError as error:
                        if error.errno != errno.ENOSPC:
                            raise
        else:
            filler.unlink(missing_ok=True)
        return f"its own {self.redis_disk_size_mb()} MB disk (a tmpfs) filled to the last byte"

    def redis_disk_size_mb(self) -> int:
        stat = os.statvfs(self.redis_disk)
        return round(stat.f_blocks * stat.f_frsize / 2**20)


def mount_tmpfs(directory: Path, size_mb: int) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)],
                             capture_output=True)
    return mounted.returncode == 0


def buttons_of(markup: Any) -> list[str]:
    rows = markup.get("inline_keyboard", []) if isinstance(markup, dict) else []
    return [button.get("text") for row in rows for button in row]


# -- simulated users -------------------------------------------------------------------------------


INLINE = 0  # the chat_id of an inline user's asks (an inline query has no chat); their message_id: the query's id
# Telegram takes an answer to an inline query only this soon after it was sent (then: "query is too old"); the
# fake Bot API has no such limit, so the users apply it: a query unanswered by then is expired, not lost.
INLINE_WINDOW_S = 15.0


@dataclass
class Ask:
    """One /joke (or inline query) and what came back for it."""

    chat_id: int
    message_id: int
    sent_at: float
    prompt: str = ""
    user_id: int = 0
    jokes: list[float] = field(default_factory=list)   # when each distinct message with a finished joke came
    other: list[str] = field(default_factory=list)     # finished replies that are not jokes (refusals, apologies)
    answered_at: float | None = None                    # the first finished reply, joke or not
    joke_messages: set = field(default_factory=set)    # the messages behind `jokes`: an edit again is no double
    expired: bool = False  # an inline query Telegram would no longer take an answer to (INLINE_WINDOW_S)

    @property
    def answered(self) -> bool:
        return bool(self.jokes or self.other)

    @property
    def settled(self) -> bool:
        """Answered, or expired: nothing more can come."""
        return self.answered or self.expired

    def joke(self, message: Any, at: float) -> None:
        if message not in self.joke_messages:
            self.joke_messages.add(message)
            self.jokes.append(at)


@dataclass
class User:
    user_id: int
    chat_id: int  # the user's id for a private chat; a group of their own; INLINE for an inline user
    asks: list[Ask] = field(default_factory=list)
    pause_s: float = 0.0  # before the next ask, once the last one is settled


class Users:
    """Closed-loop users: each asks for a joke, waits for it, asks again (up to `requests_per_user`)."""

    def __init__(self, api: FakeBotAPI, count: int, requests_per_user: int | None, group_every: int = 0,
                 inline_every: int = 0, think_s: float = 0.0) -> None:
        """`group_every` = n: every n-th user asks in a group chat (a placeholder edited into the joke);
        `inline_every` = m: every m-th of the others asks in inline mode (takes a finished variant, or picks
        the ✍️ article and waits for the joke to be written into the message it sent); `think_s`: how long a
        user reads a joke before asking again, on average (drawn anew each time, so users do not ask in step)."""
        self.api = api
        self.requests_per_user = requests_per_user
        self.think_s = think_s
        self.users = []
        for n in range(count):
            in_group = bool(group_every) and n % group_every == group_every - 1
            others = n // group_every if group_every else n  # the index of this user among the others
            inline = not in_group and bool(inline_every) and others % inline_every == inline_every - 1
            chat_id = -(1_000_000_000_000 + n) if in_group else INLINE if inline else 20_000 + n
            self.users.append(User(20_000 + n, chat_id))
        self.asks: dict[tuple[int, int], Ask] = {}
        self.sending = True
        self._cursor = 0
        self._inline_messages: dict[str, Ask] = {}  # inline_message_id of a picked ✍️ article -> its ask

    def ask_once(self, user_id: int, text: str, group: int | None = None) -> Ask:
        """One extra ask (a poison request, an open-loop arrival) in `user_id`'s private chat or in `group`,
        counted with the rest."""
        if group is None:
            message = self.api.private_message(user_id, text)["message"]
        else:
            message = self.api.group_message(group, user_id, text)["message"]
        ask = Ask(group or user_id, message["message_id"], time.time())
        self.asks[(ask.chat_id, ask.message_id)] = ask
        return ask

    def step(self) -> None:
        """Read the Bot API calls made since the last step, then let idle users ask again."""
        calls = self.api.calls()
        for call in calls[self._cursor:]:
            self._read(call)
        self._cursor = len(calls)
        now = time.time()
        for ask in self.asks.values():  # unanswered in Telegram's window, and no ✍️ article picked
            if (ask.chat_id == INLINE and not ask.settled and now - ask.sent_at > INLINE_WINDOW_S
                    and ask not in self._inline_messages.values()):
                ask.expired = True
        if not self.sending:
            return
        for user in self.users:
            if (user.asks and not user.asks[-1].settled) or (
                    self.requests_per_user is not None and len(user.asks) >= self.requests_per_user):
                continue
            last = user.asks[-1] if user.asks else None  # expired: no answer, the ask itself long past
            if last is not None and now - (last.answered_at or last.sent_at) < user.pause_s:
                continue
            user.pause_s = random.uniform(0.0, 2 * self.think_s)
            prompt = PROMPTS[len(self.asks) % len(PROMPTS)]
            sent_at = time.time()
            if user.chat_id == INLINE:
                query_id = int(self.api.inline_query(user.user_id, prompt)["inline_query"]["id"])
                ask = Ask(INLINE, query_id, sent_at, prompt, user.user_id)
            else:
                if user.chat_id > 0:
                    message = self.api.private_message(user.user_id, f"/joke {prompt}")["message"]
                else:
                    message = self.api.group_message(user.chat_id, user.user_id, f"/joke {prompt}")["message"]
                ask = Ask(user.chat_id, message["message_id"], sent_at, prompt, user.user_id)
            user.asks.append(ask)
            self.asks[(ask.chat_id, ask.message_id)] = ask

    def _read(self, call: Call) -> None:
        if call.error is not None:
            return
        if call.method == "answerInlineQuery":
            self._read_inline_answer(call)
            return
        if call.method not in ("sendMessage", "editMessageText"):
            return
        chat_id, text = call.params.get("chat_id"), str(call.params.get("text") or "")
        if call.params.get("inline_message_id"):  # the joke written into a picked ✍️ article's message
            message = str(call.params["inline_message_id"])
            ask = self._inline_messages.get(message)
        elif call.method == "sendMessage":  # every send is a message of its own
            ask = self.asks.get((chat_id, (call.params.get("reply_parameters") or {}).get("message_id")))
            message = ("sent", id(call))
        else:  # an edited placeholder: it replies to the user's message
            with self.api._lock:
                placeholder = self.api.messages.get((chat_id, call.params.get("message_id"))) or {}
            asked_in = (placeholder.get("reply_to_message") or {}).get("message_id")
            ask, message = self.asks.get((chat_id, asked_in)), (chat_id, call.params.get("message_id"))
        if ask is None:
            return
        if buttons_of(call.params.get("reply_markup")) == JOKE_BUTTONS:
            ask.joke(message, call.time)
        elif text != texts.PLACEHOLDER and not text.endswith(texts.TYPING_SUFFIX):
            ask.other.append(text)
        else:
            return
        ask.answered_at = ask.answered_at or call.time

    def _read_inline_answer(self, call: Call) -> None:
        ask = self.asks.get((INLINE, int(call.params.get("inline_query_id") or 0)))
        if ask is None or ask.expired or call.time - ask.sent_at > INLINE_WINDOW_S:  # Telegram: "query is too old"
            return
        results = call.params.get("results") or []
        finished = [r for r in results if buttons_of(r.get("reply_markup")) == JOKE_BUTTONS]
        article = next((r for r in results if buttons_of(r.get("reply_markup")) == [texts.BUTTON_WRITE]), None)
        if finished:  # the user sends a finished variant: that is the joke
            ask.joke(("inline", ask.message_id), call.time)
        elif article is not None:  # the user picks ✍️: the bot writes the joke into the message it sent
            inline_message_id = f"drill-inline-{ask.message_id}"
            self._inline_messages[inline_message_id] = ask
            self.api.chosen_inline_result(ask.user_id, article["id"], ask.prompt, inline_message_id=inline_message_id)
            return
        else:  # a refusal: no results, a button that says why
            ask.other.append(str((call.params.get("button") or {}).get("text") or "no results"))
        ask.answered_at = ask.answered_at or call.time

    def run(self, until: float, tick: Callable[[], None] = lambda: None, interval: float = 0.02) -> None:
        """Step until every user is done (or `until`, a time.time()); `tick` runs between steps."""
        while time.time() < until:
            self.step()
            tick()
            if self.done():
                return
            time.sleep(interval)

    def done(self) -> bool:
        idle = all(not user.asks or user.asks[-1].settled for user in self.users)
        if not self.sending:
            return idle
        return self.requests_per_user is not None and idle and all(
            len(user.asks) >= self.requests_per_user for user in self.users)

    # -- figures ---------------------------------------------------------------------------------------

    def outstanding_at(self, moment: float) -> list[Ask]:
        return [ask for ask in self.asks.values()
                if ask.sent_at <= moment and (ask.answered_at is None or ask.answered_at > moment)]

    def joke_times(self) -> list[float]:
        return sorted(t for ask in self.asks.values() for t in ask.jokes)

    def summary(self) -> dict[str, Any]:
        asks = list(self.asks.values())
        latencies = [ask.jokes[0] - ask.sent_at for ask in asks if ask.jokes]
        return {
            "asked": len(asks),
            "jokes": sum(1 for ask in asks if ask.jokes),
            "other": sum(1 for ask in asks if ask.other and not ask.jokes),
            "lost": sum(1 for ask in asks if not ask.settled),
            "expired": sum(1 for ask in asks if ask.expired),
            "duplicates": sum(max(0, len(ask.jokes) - 1) for ask in asks),
            "p50_s": percentile(latencies, 0.50), "p95_s": percentile(latencies, 0.95),
            "p99_s": percentile(latencies, 0.99),
            "first_sent": min((ask.sent_at for ask in asks), default=0.0),
            "last_joke": max((t for ask in asks for t in ask.jokes), default=0.0),
            "other_texts": sorted({text for ask in asks for text in ask.other}),
        }
