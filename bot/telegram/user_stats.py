"""Per-user statistics for `/stats`: how many jokes a user asked for, the votes they gave, and their favourite
opening (the first words of the openings they wrote, most used first).

Keys (under the deployment prefix; a user's keys expire a year after their last joke or vote):
    bot:user:{user_id}:stats      hash {jokes, up, down, since}
    bot:user:{user_id}:openings   sorted set opening -> times used (the OPENINGS_KEPT most used)
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from redis.asyncio import Redis

USER_TTL_S = 365 * 24 * 3600
OPENING_WORDS = 3
OPENING_CHARS = 40
OPENINGS_KEPT = 20
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def opening_of(prompt: str) -> str:
    """"Штирлиц пришел домой, а там…" -> "штирлиц пришел домой": the first words, lower case, no edge punctuation."""
    words = [word for word in (_EDGE_PUNCTUATION.sub("", part) for part in prompt.lower().split()) if word]
    return " ".join(words[:OPENING_WORDS])[:OPENING_CHARS]


@dataclass(frozen=True)
class UserStats:
    jokes: int = 0
    up: int = 0
    down: int = 0
    favourite_opening: str | None = None
    favourite_uses: int = 0
    since: float | None = None


class UserStatsStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:user:"

    def _keys(self, user_id: int) -> tuple[str, str]:
        base = f"{self._prefix}{int(user_id)}"
        return f"{base}:stats", f"{base}:openings"

    async def count_joke(self, user_id: int, prompt: str) -> None:
        stats, openings = self._keys(user_id)
        opening = opening_of(prompt)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(stats, "jokes", 1)
            pipe.hsetnx(stats, "since", f"{time.time():.0f}")
            pipe.expire(stats, USER_TTL_S)
            if opening:  # a member of a sorted set, never part of a key name
                pipe.zincrby(openings, 1, opening)
                pipe.zremrangebyrank(openings, 0, -OPENINGS_KEPT - 1)
                pipe.expire(openings, USER_TTL_S)
            await pipe.execute()

    async def count_vote(self, user_id: int, value: int, outcome: str) -> None:
        """`outcome` of FeedbackStore.vote: "new" counts the vote, "changed" moves it from the other side."""
        if outcome not in ("new", "changed"):
            return
        stats, _ = self._keys(user_id)
        given, other = ("up", "down") if value > 0 else ("down", "up")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(stats, given, 1)
            if outcome == "changed":
                pipe.hincrby(stats, other, -1)
            pipe.expire(stats, USER_TTL_S)
            await pipe.execute()

    async def get(self, user_id: int) -> UserStats:
        stats, openings = self._keys(user_id)
        raw = await self._redis.hgetall(stats)
        top = await self._redis.zrevrange(openings, 0, 0, withscores=True)
        opening, uses = top[0] if top else (None, 0)
        return UserStats(jokes=int(raw.get("jokes", 0)), up=max(0, int(raw.get("up", 0))),
                         down=max(0, int(raw.get("down", 0))), favourite_opening=opening, favourite_uses=int(uses),
                         since=float(raw["since"]) if raw.get("since") else None)
