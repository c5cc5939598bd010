"""The Redis Streams protocol between the bot and the generation workers.

This module is the one place that says what travels through Redis and under which names.

Streams (every name below carries a configurable prefix, `rujokes:` by default):

    requests:high     JokeRequest entries for inline queries (a user is staring at a spinner)
    requests:normal   JokeRequest entries for everything else
    results           JokeResult entries, final and partial
    deadletter        requests that could not be served (poison / retried too often / unparseable)

Every entry has a single field, `data`, holding the model's JSON.

Groups:
    `workers` on both request streams: each request goes to exactly one worker. Workers read
        `requests:high` before `requests:normal`, so inline queries overtake commands. A worker's
        id is its consumer name (keep it stable, so a restarted worker finds its own pending work).
    `bot` on the results stream: results survive a bot restart, because what the bot read but did
        not acknowledge is re-read from its pending list when it comes back.

Keys:
    active_size            hash {size, by_user, at}: the size that requests with size "active" use;
                           workers read it at every batch boundary
    workers:{worker_id}    WorkerInfo JSON with a TTL: the heartbeat; an expired key is a dead worker
    workers                sorted set: worker id → heartbeat expiry (ms), so live workers are one read
    results:done:{req_id}  set NX with a TTL by the result reader: dedupes results delivered twice

Key names hold only the prefix, fixed words, integers and ids this system made; a string from outside
goes through `key_part` first (see SECURITY.md).

Delivery guarantees:
    * A request is acknowledged (XACK + XDEL) in the same atomic step that writes its final result,
      and only by the worker that still owns it, so an accepted request is answered at least once,
      and normally exactly once; the reader's dedupe key turns the rare duplicate into a no-op.
    * A request whose worker died is reclaimed by another worker after `claim_idle_ms`. A live worker
      keeps its in-flight requests fresh, so slow generation is not mistaken for death.
    * A request delivered more than `max_deliveries` times is moved to `deadletter` and answered
      "failed" instead of being retried forever; one past its deadline is answered "expired".
    * Acked requests are deleted, so the length of the request streams is the outstanding work;
      `submit` refuses new work above `max_queue` (backpressure) instead of queueing it.
    * Partial results are best effort: published without acking, ignored once the final one is seen.
    * With AOF on, accepted requests and unread results survive a Redis restart.
    * Deadlines and latencies compare the bot's and the workers' clocks: keep them NTP-synced.
    * Every step tolerates being repeated, so clients may retry commands across reconnects: a repeated
      submit gives a duplicate answer the reader drops, a repeated finish is refused by the ownership
      check, and entries from a lost XREADGROUP reply sit pending until reclaimed.
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from rujokes_model.config import SIZES

DEFAULT_PREFIX = "rujokes:"
WORKER_GROUP = "workers"
RESULT_GROUP = "bot"
DATA_FIELD = "data"

CONCRETE_SIZES = SIZES  # the model library's presets; a request may also ask for ACTIVE_SIZE
# "active" means "whatever the admin last switched to"; the worker resolves it per batch.
ACTIVE_SIZE = "active"

Priority = Literal["high", "normal"]
ResultStatus = Literal["ok", "partial", "expired", "busy", "failed", "unknown_size"]
FINAL_STATUSES = frozenset({"ok", "expired", "busy", "failed", "unknown_size"})


_SAFE_KEY_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")


def key_part(value: str) -> str:
    """`value` as one segment of a key name: itself when short and plain ([A-Za-z0-9_-]), else "~" and a hash.

    For strings from outside (Telegram's inline_message_id, ids read back from buttons): nothing a user
    typed can add a ":" segment, a glob character or a newline to a key, or make one unboundedly long.
    """
    if _SAFE_KEY_PART.fullmatch(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class StreamKeys:
    """All Redis names, derived from one prefix so several deployments can share a Redis."""

    prefix: str = DEFAULT_PREFIX

    @property
    def requests_high(self) -> str:
        return f"{self.prefix}requests:high"

    @property
    def requests_normal(self) -> str:
        return f"{self.prefix}requests:normal"

    @property
    def request_streams(self) -> tuple[str, str]:
        """In reading order: high priority first."""
        return (self.requests_high, self.requests_normal)

    def requests(self, priority: Priority) -> str:
        return self.requests_high if priority == "high" else self.requests_normal

    @property
    def results(self) -> str:
        return f"{self.prefix}results"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}deadletter"

    @property
    def active_size(self) -> str:
        return f"{self.prefix}active_size"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}workers:{worker_id}"

    @property
    def worker_registry(self) -> str:
        """Sorted set of worker ids scored by heartbeat expiry (ms): live workers in one read, no SCAN."""
        return f"{self.prefix}workers"

    def result_done(self, request_id: str) -> str:
        return f"{self.prefix}results:done:{request_id}"


class Delivery(BaseModel):
    """Where the bot puts the answer: a placeholder message to edit, an inline message, or an inline query."""

    chat_id: int | None = None
    message_id: int | None = None  # the "пишу анекдот…" placeholder to edit
    reply_to_message_id: int | None = None
    message_thread_id: int | None = None  # the forum topic asked in: a new message goes there
    inline_message_id: str | None = None
    inline_query_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Delivery:
        targets = [self.chat_id is not None, self.inline_message_id is not None, self.inline_query_id is not None]
        if sum(targets) != 1:
            raise ValueError("exactly one of chat_id, inline_message_id, inline_query_id must be set")
        if self.chat_id is None and (self.message_id, self.reply_to_message_id, self.message_thread_id) != (None,) * 3:
            raise ValueError("message_id, reply_to_message_id and message_thread_id need a chat_id")
        return self


class SamplingParams(BaseModel):
    top_k: int = Field(10, ge=0, description="0 disables top-k")
    temperature: float = Field(1.0, ge=0.0, description="0 means greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int = Field(120, ge=1, le=2048)
    seed: int | None = None


def _new_request_id() -> str:
    return uuid.uuid4().hex


class JokeRequest(BaseModel):
    request_id: str = Field(default_factory=_new_request_id)
    kind: str = Field("command", description='"command", "inline", "more", …: informational for the worker')
    delivery: Delivery
    user_id: int | None = None
    prompt: str = ""
    # A plain str, not a Literal: an unknown size must reach the worker and come back "unknown_size"
    # rather than fail to parse and disappear into the dead-letter stream.
    size: str = ACTIVE_SIZE
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    priority: Priority = "normal"
    deadline: float = Field(description="unix time after which the answer is useless")
    created_at: float = Field(default_factory=time.time)
    stream_partials: bool = False

    @model_validator(mode="before")
    @classmethod
    def _inline_is_high_priority(cls, data: Any) -> Any:
        if isinstance(data, dict) and "priority" not in data:
            data = {**data, "priority": "high" if data.get("kind") == "inline" else "normal"}
        return data


class JokeResult(BaseModel):
    """What a worker answers. `status` is a code; the bot turns it into Russian text for the user."""

    request_id: str
    delivery: Delivery
    status: ResultStatus
    text: str = ""
    size: str | None = None  # the concrete size that generated `text`
    worker_id: str = ""
    latency_s: float = 0.0  # from the request's created_at to this result
    tokens: int = 0
    forward_passes: int = 0
    error: str | None = None  # a short machine-readable detail for logs, never shown to users
    finished_at: float = Field(default_factory=time.time)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def answer(cls, request: JokeRequest, status: ResultStatus, worker_id: str, **fields: Any) -> JokeResult:
        now = time.time()
        return cls(
            request_id=request.request_id,
            delivery=request.delivery,
            status=status,
            worker_id=worker_id,
            latency_s=max(0.0, now - request.created_at),
            finished_at=now,
            **fields,
        )


class WorkerInfo(BaseModel):
    """A worker's heartbeat, stored under workers:{worker_id} with a TTL."""

    worker_id: str
    host: str
    pid: int
    device: str
    loaded_sizes: list[str]
    batch_size: int
    processed: int = 0
    queue_lag: int = 0  # outstanding requests when the heartbeat was sent
    started_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class DeadLetter(BaseModel):
    """A dead-letter entry: the raw request plus why it was given up on."""

    stream: str
    entry_id: str
    reason: str  # "max_deliveries" | "invalid"
    deliveries: int
    payload: str
    worker_id: str
    at: float = Field(default_factory=time.time)
