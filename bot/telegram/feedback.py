"""What users thought of the jokes, and the numbers behind /stats, in Redis.

Keys (under the deployment prefix):
    bot:joke:{joke_id}     hash {prompt, size}: what "🔁 Ещё" and the votes refer to (TTL joke_ttl_s)
    bot:chat_joke:{chat_id}:{message_id}  joke_id of a joke the bot wrote in a group (TTL joke_ttl_s): a reply
                           to that message asks for a joke
    bot:votes:{joke_id}    hash user_id -> "1" | "-1": one vote per user per joke (TTL joke_ttl_s)
    bot:stats:size:{size}  hash {jokes, up, down}
    bot:stats:totals       hash {requests, timeouts}
    bot:latency            list of recent latencies in seconds (capped), for p50/p95
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from bot.queue.protocol import CONCRETE_SIZES, key_part

VoteOutcome = Literal["new", "changed", "same", "unknown"]

# One vote per user per joke; a changed vote moves one count from one side to the other.
_VOTE_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] then return 'same' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if old then redis.call('HINCRBY', KEYS[2], old == '1' and 'up' or 'down', -1) end
redis.call('HINCRBY', KEYS[2], ARGV[2] == '1' and 'up' or 'down', 1)
if old then return 'changed' end
return 'new'
"""


@dataclass(frozen=True)
class Joke:
    prompt: str
    size: str


@dataclass(frozen=True)
class SizeStats:
    size: str
    jokes: int
    up: int
    down: int


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p95: float | None
    samples: int


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation: the value really occurred)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class FeedbackStore:
    def __init__(self, redis: Redis, prefix: str, joke_ttl_s: int = 30 * 86_400, latency_samples: int = 1000) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:"
        self._joke_ttl_s = joke_ttl_s
        self._latency_samples = latency_samples
        self._vote = redis.register_script(_VOTE_LUA)

    def _joke_key(self, joke_id: str) -> str:
        return f"{self._prefix}joke:{key_part(joke_id)}"

    def _votes_key(self, joke_id: str) -> str:
        return f"{self._prefix}votes:{key_part(joke_id)}"

    def _size_key(self, size: str) -> str:
        return f"{self._prefix}stats:size:{key_part(size)}"

    @property
    def _totals_key(self) -> str:
        return f"{self._prefix}stats:totals"

    @property
    def _latency_key(self) -> str:
        return f"{self._prefix}latency"

    # -- jokes and votes ---------------------------------------------------------------------------

    async def remember_joke(self, joke_id: str, prompt: str, size: str, latency_s: float) -> None:
        """A joke was delivered: keep what its buttons need, and count it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._joke_key(joke_id), mapping={"prompt": prompt, "size": size})
            pipe.expire(self._joke_key(joke_id), self._joke_ttl_s)
            pipe.hincrby(self._size_key(size), "jokes", 1)
            pipe.lpush(self._latency_key, f"{latency_s:.3f}")
            pipe.ltrim(self._latency_key, 0, self._latency_samples - 1)
            await pipe.execute()

    def _chat_joke_key(self, chat_id: int, message_id: int) -> str:
        return f"{self._prefix}chat_joke:{int(chat_id)}:{int(message_id)}"

    async def remember_chat_joke(self, chat_id: int, message_id: int, joke_id: str) -> None:
        await self._redis.set(self._chat_joke_key(chat_id, message_id), joke_id, ex=self._joke_ttl_s)

    async def chat_joke(self, chat_id: int, message_id: int) -> str | None:
        """The joke_id of the bot's joke in that message, or None (not a joke, or forgotten)."""
        return await self._redis.get(self._chat_joke_key(chat_id, message_id))

    async def joke(self, joke_id: str) -> Joke | None:
        fields = await self._redis.hgetall(self._joke_key(joke_id))
        return Joke(fields["prompt"], fields["size"]) if fields else None

    async def vote(self, joke_id: str, user_id: int, value: Literal[1, -1], joke: Joke | None = None) -> VoteOutcome:
        """`joke`: the joke if the caller has looked it up already (saves a round trip)."""
        joke = joke or await self.joke(joke_id)
        if joke is None:
            return "unknown"
        return await self._vote(
            keys=[self._votes_key(joke_id), self._size_key(joke.size)],
            args=[user_id, str(value), self._joke_ttl_s],
        )

    # -- counters --------------------------------------------------------------------------------

    async def count_request(self) -> None:
        await self._redis.hincrby(self._totals_key, "requests", 1)

    async def count_timeout(self) -> None:
        await self._redis.hincrby(self._totals_key, "timeouts", 1)

    async def totals(self) -> dict[str, int]:
        fields = await self._redis.hgetall(self._totals_key)
        return {"requests": int(fields.get("requests", 0)), "timeouts": int(fields.get("timeouts", 0))}

    async def size_stats(self) -> list[SizeStats]:
        """Sizes that have any jokes or votes, in size order."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for size in CONCRETE_SIZES:
                pipe.hgetall(self._size_key(size))
            replies = await pipe.execute()
        return [SizeStats(size, int(f.get("jokes", 0)), int(f.get("up", 0)), int(f.get("down", 0)))
                for size, f in zip(CONCRETE_SIZES, replies) if f]

    async def latency(self) -> Latency:
        values = sorted(float(v) for v in await self._redis.lrange(self._latency_key, 0, -1))
        if not values:
            return Latency(None, None, 0)
        return Latency(percentile(values, 0.5), percentile(values, 0.95), len(values))
