"""Rate limits kept in Redis, so they hold across bot restarts (and several bot processes).

`TokenBucket` is the primitive; `UserRateLimiter` caps jokes per user, `ChatPacer` spaces out what the
bot sends to one group chat (Telegram allows about 20 messages per minute per group).
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from redis.asyncio import Redis

# Refill by elapsed time, then take `cost` tokens if there are enough and `reserve` more would be left. Redis's
# own clock (TIME), so bots on different machines agree. Returns {allowed, seconds to wait until they exist}.
# Wait times travel as strings: a Lua number in a reply is truncated to an integer.
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4]) or 0
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= cost + reserve then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost + reserve - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed

    @property
    def retry_after_whole_s(self) -> int:
        """For people: "через 3 с" rather than "через 2.41 с"."""
        return max(1, math.ceil(self.retry_after_s))


class TokenBucket:
    """`burst` tokens at most, refilled at `per_minute` per minute; each key has its own bucket."""

    def __init__(self, redis: Redis, key_prefix: str, per_minute: float, burst: int) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a token bucket needs per_minute > 0 and burst >= 1")
        self._key_prefix = key_prefix
        self._rate_per_s = per_minute / 60.0
        self._burst = burst
        self._take = redis.register_script(_TAKE_LUA)

    async def take(self, key: str | int, cost: float = 1.0, reserve: float = 0.0) -> Decision:
        """`cost` tokens if `reserve` more would be left; a refusal takes nothing."""
        allowed, wait = await self._take(keys=[f"{self._key_prefix}{key}"],
                                         args=[self._rate_per_s, self._burst, cost, reserve])
        return Decision(bool(allowed), float(wait))


class UserRateLimiter:
    """Jokes per user, wherever they ask (every chat, 🔁 Ещё, inline messages share one bucket): a refusal
    carries how long to wait, for the message to the user."""

    def __init__(self, redis: Redis, prefix: str, per_minute: float, burst: int) -> None:
        self._redis = redis
        self._bucket = TokenBucket(redis, f"{prefix}bot:ratelimit:user:", per_minute, burst)
        self._told_prefix = f"{prefix}bot:ratelimit:told:"

    async def check(self, user_id: int) -> Decision:
        return await self._bucket.take(int(user_id))

    async def first_refusal(self, user_id: int, chat_id: int, decision: Decision) -> bool:
        """True once per wait and chat: a user who keeps asking while refused is told once, so that spamming
        /joke does not make the bot spam the chat (and spend a group's message budget) in turn."""
        key = f"{self._told_prefix}{int(user_id)}:{int(chat_id)}"
        return bool(await self._redis.set(key, "1", nx=True, px=max(1, math.ceil(decision.retry_after_s * 1000))))


class ChatPacer:
    """Waits for a group chat's turn instead of refusing: the answer is late rather than lost.

    A small burst keeps one command snappy (placeholder + final edit) while the long-run rate
    stays at `per_minute`.
    """

    def __init__(self, redis: Redis, prefix: str, per_minute: int, burst: int | None = None,
                 max_wait_s: float = 120.0, name: str = "chat") -> None:
        burst = burst if burst is not None else max(2, per_minute // 4)
        self._bucket = TokenBucket(redis, f"{prefix}bot:pace:{name}:", per_minute, burst)
        self._max_wait_s = max_wait_s

    async def wait_turn(self, chat_id: int) -> float:
        """Take one message slot for chat_id, sleeping until there is one; returns seconds waited."""
        waited = 0.0
        while True:
            decision = await self._bucket.take(chat_id)
            if decision.allowed or waited >= self._max_wait_s:  # past max_wait: send rather than starve
                return waited
            pause = min(decision.retry_after_s + 0.01, self._max_wait_s - waited + 0.01)
            await asyncio.sleep(pause)
            waited += pause

    async def try_turn(self, chat_id: int, reserve: int = 1) -> bool:
        """One slot now if `reserve` would still be free for messages that wait their turn, else none (no wait)."""
        return (await self._bucket.take(chat_id, reserve=reserve)).allowed


def global_pacer(redis: Redis, prefix: str, per_second: int) -> ChatPacer:
    """One bucket for every message of the bot, whichever chat and bot process sends it (take with `wait_turn(0)`)."""
    return ChatPacer(redis, prefix, per_second * 60, burst=per_second, max_wait_s=30.0, name="global")


def is_group_chat(chat_id: int | None) -> bool:
    """Group and supergroup ids are negative; private chats (users) are positive."""
    return chat_id is not None and chat_id < 0
