"""The daily joke: `/daily 09:00 [time zone]` subscribes a chat (private, group, or a channel the bot posts in)
to one joke a day at that local time; `/daily off` stops it.

Durable by construction, with every step a compare-and-set in Redis so that any number of bot replicas
(and restarts of the bot or of Redis with AOF) post each day's joke once:

    due      when a chat's next post is due; `claim` moves it to the following day and creates the day's
             post in the same Lua step, so exactly one replica claims a day and a claimed day cannot vanish
    pending  claimed posts not yet shown, each with the time its next attempt may start; an attempt takes a
             lease (another compare-and-set) and submits the joke request, whose id is the post's id, so a
             repeated submit is deduplicated like any other (bot/queue/results.py)
    sent     set once, just before the post is sent (`claim_send`): a post is sent at most once

A post whose joke fails, expires or finds no worker is retried silently when its lease runs out (nobody
asked for it, so nobody is told "sorry"), up to MAX_ATTEMPTS; a chat the bot may no longer post in is
unsubscribed. A day missed by more than MAX_LATE_S (the bot was down all that time) is skipped, not
posted late next to the next day's.

Keys (under the deployment prefix; chat ids are integers, post ids `daily_{chat}_{yyyymmdd}`):
    bot:daily:sub:{chat_id}     Subscription JSON
    bot:daily:due               sorted set chat_id -> unix time its next post is due
    bot:daily:pending           sorted set post_id -> unix time its next attempt may start
    bot:daily:post:{post_id}    Post JSON (chat, local day, attempts), POST_TTL_S
    bot:daily:sent:{post_id}    set just before the post was sent, POST_TTL_S
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time as clock
from datetime import date, datetime, time, timedelta
from typing import Awaitable, Callable
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.tasks import cancel_and_wait
from bot.queue.submit import QueueFull

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_LATE_S = 12 * 3600
POST_TTL_S = 3 * 24 * 3600
BUSY_RETRY_S = 30  # a full queue: try the post again this much later
POST_PREFIX = "daily_"
_TIME = re.compile(r"([01]?\d|2[0-3])[:.]([0-5]\d)")

# Claim a due chat: if its due time is still the one read, move it to the next day and create the day's post.
_CLAIM_DUE_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if redis.call('SET', KEYS[3], ARGV[6], 'NX', 'EX', ARGV[7]) then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
end
return 1
"""
# Move a member's score if it is still the one read: a pending post's next attempt (to the end of its lease),
# or a due chat skipped to its next day.
_MOVE_IF_UNCHANGED_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class Subscription(BaseModel):
    chat_id: int
    at: str  # "HH:MM", local time
    timezone: str
    language: str
    chat_type: str  # "private", "group", "supergroup", "channel"
    thread_id: int | None = None  # the forum topic /daily was sent in: the posts go there
    by_user: int | None = None
    since: float


class Post(BaseModel):
    post_id: str
    chat_id: int
    day: str  # the local date, ISO
    due_at: int
    attempts: int = 0


def parse_time(text: str) -> time | None:
    """"09:00", "9:05", "21.30" -> a time; anything else -> None."""
    match = _TIME.fullmatch(text.strip())
    return time(int(match.group(1)), int(match.group(2))) if match else None


def next_due(at: str, timezone: str, after: float) -> tuple[int, date]:
    """The first moment strictly after `after` when the local clock in `timezone` shows `at`, and its local date.
    Across a DST change the post keeps its local time (a time the clocks skip lands an hour later)."""
    zone, hour_minute = ZoneInfo(timezone), time.fromisoformat(at)
    day = datetime.fromtimestamp(after, zone).date()
    while True:
        moment = int(datetime.combine(day, hour_minute, tzinfo=zone).timestamp())
        if moment > after:
            return moment, day
        day += timedelta(days=1)


def post_id_for(chat_id: int, day: date) -> str:
    return f"{POST_PREFIX}{int(chat_id)}_{day:%Y%m%d}"


def is_daily_post(request_id: str) -> bool:
    return request_id.startswith(POST_PREFIX)


def joke_id_for(post_id: str) -> str:
    """The id the post's buttons and votes use: 32 hex digits, like every joke id (bot/telegram/keyboards.py)."""
    return hashlib.sha256(post_id.encode()).hexdigest()[:32]


SubmitPost = Callable[[Subscription, str], Awaitable[None]]  # (subscription, post id) -> submitted, or QueueFull


class DailyJokes:
    """Subscriptions, and the scheduler that turns them into posts (`run`, one per bot process)."""

    def __init__(self, redis: Redis, prefix: str, *, lease_s: float, check_interval_s: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:daily:"
        self.lease_s = lease_s
        self.check_interval_s = check_interval_s
        self._claim_due = redis.register_script(_CLAIM_DUE_LUA)
        self._move_if_unchanged = redis.register_script(_MOVE_IF_UNCHANGED_LUA)
        self._task: asyncio.Task | None = None

    def _sub_key(self, chat_id: int) -> str:
        return f"{self._prefix}sub:{int(chat_id)}"

    def _post_key(self, post_id: str) -> str:
        return f"{self._prefix}post:{post_id}"

    def _sent_key(self, post_id: str) -> str:
        return f"{self._prefix}sent:{post_id}"

    @property
    def _due_key(self) -> str:
        return f"{self._prefix}due"

    @property
    def _pending_key(self) -> str:
        return f"{self._prefix}pending"

    # -- subscriptions -------------------------------------------------------------------------------

    async def subscribe(self, subscription: Subscription, now: float | None = None) -> int:
        """Store it and schedule the next post; returns when that is due (unix time)."""
        due, _ = next_due(subscription.at, subscription.timezone, clock.time() if now is None else now)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._sub_key(subscription.chat_id), subscription.model_dump_json())
            pipe.zadd(self._due_key, {str(subscription.chat_id): due})
            await pipe.execute()
        return due

    async def unsubscribe(self, chat_id: int) -> bool:
        """False when the chat was not subscribed. A post already claimed for today is still shown."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._sub_key(chat_id))
            pipe.zrem(self._due_key, str(int(chat_id)))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def get(self, chat_id: int) -> Subscription | None:
        raw = await self._redis.get(self._sub_key(chat_id))
        return Subscription.model_validate_json(raw) if raw else None

    async def due_at(self, chat_id: int) -> float | None:
        return await self._redis.zscore(self._due_key, str(int(chat_id)))

    async def subscribed_chats(self) -> list[int]:
        return [int(member) for member in await self._redis.zrange(self._due_key, 0, -1)]

    # -- the scheduler -------------------------------------------------------------------------------

    async def claim_due(self, now: float) -> list[Post]:
        """Claim the posts due by `now` (each by one caller, whatever the number of replicas)."""
        claimed = []
        for member, score in await self._redis.zrangebyscore(self._due_key, "-inf", now, start=0, num=100,
                                                             withscores=True):
            chat_id, due_at = int(member), int(score)
            subscription = await self.get(chat_id)
            if subscription is None:  # unsubscribed between the two reads
                await self._redis.zrem(self._due_key, member)
                continue
            local_day = datetime.fromtimestamp(due_at, ZoneInfo(subscription.timezone)).date()
            following, _ = next_due(subscription.at, subscription.timezone, max(due_at, now))
            post = Post(post_id=post_id_for(chat_id, local_day), chat_id=chat_id, day=local_day.isoformat(),
                        due_at=due_at)
            if now - due_at > MAX_LATE_S:  # the bot was away all day: skip to the next one
                if await self._move_if_unchanged(keys=[self._due_key], args=[member, due_at, following]):
                    log.warning("daily post %s skipped: %.0f h late", post.post_id, (now - due_at) / 3600)
                continue
            if await self._claim_due(keys=[self._due_key, self._pending_key, self._post_key(post.post_id)],
                                     args=[member, due_at, following, post.post_id, int(now),
                                           post.model_dump_json(), POST_TTL_S]):
                claimed.append(post)
        return claimed

    async def run_pending(self, now: float, submit: SubmitPost) -> int:
        """Start an attempt for each pending post whose time has come (leased: one replica each). Returns how
        many were submitted."""
        submitted = 0
        for member, score in await self._redis.zrangebyscore(self._pending_key, "-inf", now, start=0, num=100,
                                                             withscores=True):
            lease_end = int(now + self.lease_s)
            if not await self._move_if_unchanged(keys=[self._pending_key], args=[member, int(score), lease_end]):
                continue  # another replica took it
            post = await self._post(member)
            subscription = await self.get(post.chat_id) if post is not None else None
            if post is None or await self._redis.exists(self._sent_key(member)):
                await self.done(member)  # shown already (or expired): nothing left to do
                continue
            if subscription is None or post.attempts >= MAX_ATTEMPTS or now - post.due_at > MAX_LATE_S:
                log.warning("daily post %s given up: %s", member, "unsubscribed" if subscription is None
                            else f"after {post.attempts} attempts")
                await self.done(member)
                continue
            post.attempts += 1
            await self._redis.set(self._post_key(member), post.model_dump_json(), keepttl=True)
            try:
                await submit(subscription, member)
            except QueueFull:
                await self._redis.zadd(self._pending_key, {member: int(now + BUSY_RETRY_S)}, xx=True)
                continue
            submitted += 1
        return submitted

    async def _post(self, post_id: str) -> Post | None:
        raw = await self._redis.get(self._post_key(post_id))
        return Post.model_validate_json(raw) if raw else None

    async def tick(self, submit: SubmitPost, now: float | None = None) -> int:
        now = clock.time() if now is None else now
        await self.claim_due(now)
        return await self.run_pending(now, submit)

    def start(self, submit: SubmitPost) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(submit), name="daily-jokes")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self, submit: SubmitPost) -> None:
        while True:
            try:
                await self.tick(submit)
            except RedisError as error:
                log.warning("Redis unavailable for the daily jokes (%s); retrying", error)
            except Exception:  # a bug: loud, but the next round may well work
                log.exception("the daily jokes round failed; continuing")
            await asyncio.sleep(self.check_interval_s)

    # -- delivery (bot/telegram/delivery.py) -----------------------------------------------------------

    async def claim_send(self, post_id: str) -> bool:
        """True once per post: the caller sends it. False: sent already (or a crashed process was sending)."""
        return bool(await self._redis.set(self._sent_key(post_id), "1", nx=True, ex=POST_TTL_S))

    async def release_send(self, post_id: str) -> None:
        """The send failed before Telegram took it: a later attempt may send."""
        await self._redis.delete(self._sent_key(post_id))

    async def done(self, post_id: str) -> None:
        await self._redis.zrem(self._pending_key, post_id)

    @staticmethod
    def chat_of(post_id: str) -> int:
        return int(post_id.removeprefix(POST_PREFIX).rsplit("_", 1)[0])
