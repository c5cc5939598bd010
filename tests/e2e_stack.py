"""The bot stack for end-to-end tests: a fake Telegram Bot API (in a thread), a real Redis, a real
`rujokes-worker` with tiny models and a real `rujokes-bot`, all as separate processes.

Tests drive it the way Telegram would (updates injected into the fake API) and look only at what
the bot did through the API, at Redis, and at the processes' logs.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import redis

from bot.telegram.texts import EN, RU
from bot.telegram.texts import RU as texts
from tests.fake_bot_api import FakeBotAPI
from tests.worker_process import start_console_script, start_worker, worker_env

BOT_TOKEN = "123456789:AAFakeTokenForEndToEndTests_abcdefghij"
BOT_USERNAME = "rujokes_test_bot"
ADMIN_ID = 777
JOKE_BUTTONS = [texts.BUTTON_MORE, texts.BUTTON_UP, texts.BUTTON_DOWN]
MENUS_PER_START = 4  # setMyCommands calls: the public and the admin's menu, each in Russian and in English
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05) -> T:
    """Poll until condition() is truthy and return it; fail the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bot_env(api: FakeBotAPI, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("REDIS_", "MODEL_", "WORKER_", "BOT_", "WEBHOOK_", "TELEGRAM_", "ADMIN_"))}
    env = {**keep, "BOT_TOKEN": BOT_TOKEN, "TELEGRAM_API_BASE": api.base_url, "REDIS_URL": redis_url,
           "REDIS_PREFIX": prefix, "ADMIN_IDS": str(ADMIN_ID), "LOG_LEVEL": "INFO"}
    env.update(extra)
    return env


def start_bot(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return start_console_script("rujokes-bot", env, log_path)


def stop_process(process: subprocess.Popen | None, timeout: float = 20) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass(repr=False)
class Stack:
    api: FakeBotAPI
    redis_url: str
    prefix: str
    log_dir: Path
    bot_env: dict[str, str]
    worker_env: dict[str, str]
    bot: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    _user_ids: count = field(default_factory=lambda: count(10_001))
    _group_ids: count = field(default_factory=lambda: count(1_000_000_000_001))

    def __repr__(self) -> str:  # short: a failing test (hypothesis prints its arguments) need not dump the env
        return f"Stack(prefix={self.prefix!r}, api={self.api.base_url})"

    # -- processes -----------------------------------------------------------------------------------

    @property
    def bot_log(self) -> Path:
        return self.log_dir / "bot.log"

    @property
    def worker_log(self) -> Path:
        return self.log_dir / "worker.log"

    def start_bot(self) -> None:
        self.bot = start_bot(self.bot_env, self.bot_log)

    def start(self) -> Stack:
        """Start what is not running yet; return once the worker beats and the bot polls."""
        self.worker = self.worker or start_worker(self.worker_env, self.worker_log)
        self.bot = self.bot or start_bot(self.bot_env, self.bot_log)
        self.wait_for_worker()
        # The menus (setMyCommands: public and admin, Russian and English) are the bot's last step before polling
        # (the fake logs a long poll only when it ends).
        wait_until(lambda: len(self.api.calls("setMyCommands")) >= MENUS_PER_START or self._died(self.bot), 60,
                   "the bot to start")
        assert self.bot.poll() is None, self.log_tail(self.bot_log)
        return self

    def _died(self, process: subprocess.Popen | None) -> bool:
        return process is not None and process.poll() is not None

    def wait_for_worker(self, timeout: float = 90) -> None:
        with self.redis() as client:
            wait_until(lambda: list(client.scan_iter(f"{self.prefix}workers:*")) or self._died(self.worker),
                       timeout, "the worker's heartbeat")
        assert self.worker.poll() is None, self.log_tail(self.worker_log)

    def restart_worker(self) -> None:
        stop_process(self.worker)
        self.worker = start_worker(self.worker_env, self.worker_log)
        self.wait_for_worker()

    def restart_bot(self) -> None:
        """Stop the bot cleanly and start it again with the same settings; return once it polls."""
        menus = len(self.api.calls("setMyCommands"))
        assert stop_process(self.bot) == 0, self.log_tail(self.bot_log)
        self.start_bot()
        wait_until(lambda: len(self.api.calls("setMyCommands")) >= menus + MENUS_PER_START or self._died(self.bot), 60,
                   "the restarted bot")
        assert self.bot.poll() is None, self.log_tail(self.bot_log)

    @contextlib.contextmanager
    def bot_with(self, **env: str) -> Iterator[None]:
        """The bot restarted with other settings for the block, then the usual one again."""
        assert stop_process(self.bot) == 0, self.log_tail(self.bot_log)
        menus = len(self.api.calls("setMyCommands"))
        self.bot = start_bot({**self.bot_env, **env}, self.bot_log)
        try:
            wait_until(lambda: len(self.api.calls("setMyCommands")) >= menus + MENUS_PER_START or self._died(self.bot),
                       60, f"the bot with {env}")
            assert self.bot.poll() is None, self.log_tail(self.bot_log)
            yield
        finally:
            self.restart_bot()

    @contextlib.contextmanager
    def watch_requests(self) -> Iterator[list[dict[str, Any]]]:
        """Every JokeRequest (as JSON) added to requests:normal while the block runs, in order.

        A blocked XREAD is served the moment an entry is added, before the worker can claim and delete it,
        so nothing needs pausing; the list fills from a thread while the block waits.
        """
        seen: list[dict[str, Any]] = []
        done = threading.Event()
        stream = f"{self.prefix}requests:normal"
        client = self.redis()
        info = client.xinfo_stream(stream) if client.exists(stream) else {}
        last = info.get("last-generated-id", "0-0")

        def read() -> None:
            nonlocal last
            while not done.is_set():
                for _, entries in client.xread({stream: last}, block=200) or []:
                    for entry_id, fields in entries:
                        seen.append(json.loads(fields["data"]))
                        last = entry_id

        reader = threading.Thread(target=read, name="watch-requests", daemon=True)
        reader.start()
        try:
            yield seen
        finally:
            done.set()
            reader.join(5)
            client.close()

    def pause_worker(self) -> None:
        os.kill(self.worker.pid, signal.SIGSTOP)

    def resume_worker(self) -> None:
        os.kill(self.worker.pid, signal.SIGCONT)

    def close(self) -> None:
        stop_process(self.bot)
        stop_process(self.worker)

    def log_tail(self, path: Path, chars: int = 4000) -> str:
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    @property
    def bot_metrics_url(self) -> str:
        """Base URL of the bot's /metrics and /healthz."""
        return f"http://127.0.0.1:{self.bot_env['BOT_METRICS_PORT']}"

    # -- people and chats ------------------------------------------------------------------------------

    def new_user(self) -> int:
        return next(self._user_ids)

    def new_group(self) -> int:
        return -next(self._group_ids)

    # -- what the bot did ------------------------------------------------------------------------------

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat, current version (after edits), oldest first."""
        bot_id = self.api.bot_user["id"]
        with self.api._lock:
            return [dict(m) for (cid, _), m in sorted(self.api.messages.items())
                    if cid == chat_id and m.get("from", {}).get("id") == bot_id]

    def finished_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """Bot messages that are no longer a placeholder or a joke still being written."""
        return [m for m in self.bot_messages(chat_id)
                if m.get("text") not in (RU.PLACEHOLDER, EN.PLACEHOLDER) and not m.get("text", "").endswith(RU.TYPING_SUFFIX)]

    def wait_for_reply(self, chat_id: int, timeout: float = 20, nth: int = 1) -> dict[str, Any]:
        """The nth finished bot message in the chat (a joke or a message to the user)."""
        found = wait_until(lambda: len(self.finished_messages(chat_id)) >= nth and self.finished_messages(chat_id),
                           timeout, f"reply #{nth} in chat {chat_id}; bot log:\n{self.log_tail(self.bot_log)}")
        return found[nth - 1]

    def callback_answer(self, query_id: str, timeout: float = 10) -> dict[str, Any]:
        def answered() -> dict | None:
            return next((a for a in self.api.callback_answers if str(a["callback_query_id"]) == query_id), None)
        return wait_until(answered, timeout, f"an answer to callback query {query_id}")

    def inline_answer(self, query_id: str, timeout: float = 10) -> dict[str, Any]:
        def answered() -> dict | None:
            return next((a for a in self.api.inline_answers if str(a["inline_query_id"]) == query_id), None)
        return wait_until(answered, timeout, f"an answer to inline query {query_id}")

    def admin_reply(self, text: str, user_id: int = ADMIN_ID) -> str:
        """Send a command in the user's private chat and return the bot's reply to it."""
        sent = self.api.private_message(user_id, text)["message"]

        def reply() -> str | None:
            return next((m["text"] for m in self.bot_messages(user_id)
                         if (m.get("reply_to_message") or {}).get("message_id") == sent["message_id"]), None)
        return wait_until(reply, 10, f"a reply to {text!r}")


def button_texts(message: dict[str, Any]) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [button["text"] for row in markup.get("inline_keyboard", []) for button in row]


def is_joke(message: dict[str, Any]) -> bool:
    """A finished joke carries the 🔁 Ещё / 👍 / 👎 buttons; messages to the user do not."""
    return button_texts(message) == JOKE_BUTTONS


def calls_to(stack: Stack, method: str, chat_id: int | None = None, since: float = 0.0) -> list:
    return [c for c in stack.api.calls(method)
            if c.time >= since and (chat_id is None or c.params.get("chat_id") == chat_id)]


def make_stack(api: FakeBotAPI, redis_url: str, prefix: str, log_dir: Path, nano_dir: Path, mini_dir: Path,
               **bot_settings: str) -> Stack:
    """Short timings so waits, timeouts and retries happen within a test's patience (INLINE_WAIT_S: long
    enough that a tiny worker on a loaded machine has its variants ready by then)."""
    settings = dict(REQUEST_TIMEOUT_S="8", RESULT_GRACE_S="1", INLINE_WAIT_S="4", INLINE_VARIANTS="2",
                    EDIT_INTERVAL_S="0.1", MAX_NEW_TOKENS="32", RATE_LIMIT_PER_MINUTE="30", RATE_LIMIT_BURST="4",
                    PROMPT_MAX_CHARS="300", CLAIM_IDLE_MS="3000", BOT_METRICS_PORT=str(free_port()),
                    METRICS_HOST="127.0.0.1", LENGTH_SHORT_TOKENS="6", CHAT_SIZES="nano,mini",
                    DAILY_CHECK_INTERVAL_S="0.5")
    settings.update(bot_settings)
    workers = worker_env(redis_url, prefix, nano_dir, MODEL_MINI=str(mini_dir), WORKER_BATCH_SIZE="8",
                         PARTIAL_INTERVAL_S="0.05", HEARTBEAT_TTL_S="8", CLAIM_IDLE_MS="3000", WORKER_ID="e2e-worker")
    return Stack(api, redis_url, prefix, log_dir, bot_env(api, redis_url, prefix, **settings), workers)
