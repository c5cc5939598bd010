"""Async Redis Streams client for the request side of the protocol described in bot/protocol.py.

`RequestQueue` is what the bot submits to and what workers claim from and answer through (the bot
reads the answers with `bot.results.ResultReader`). This module holds the bot's side, submitting
with backpressure, and the state both sides share (active size, heartbeats); the workers' side
(claim, reclaim, answer, dead-letter) is `bot.claims.RequestClaims`, which RequestQueue extends.
The client must be created with decode_responses=True.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from bot.claims import RequestClaims
from bot.protocol import CONCRETE_SIZES, DATA_FIELD, DEFAULT_PREFIX, JokeRequest, WorkerInfo

# Atomic so that two bots cannot both squeeze under the limit.
_SUBMIT_LUA = """
local depth = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])
if depth >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[4])
"""


@dataclass(frozen=True)
class QueueConfig:
    prefix: str = DEFAULT_PREFIX
    max_queue: int = 100           # outstanding requests (both streams) above which submit refuses
    max_deliveries: int = 3        # a request delivered more often than this is dead-lettered
    claim_idle_ms: int = 60_000    # a pending request idle this long belongs to a dead worker
    stream_maxlen: int = 10_000    # approximate cap per stream: a safety net, not the backpressure
    dedupe_ttl_s: int = 86_400     # how long the result reader remembers a handled request_id

    def __post_init__(self) -> None:
        if self.max_queue > self.stream_maxlen:
            raise ValueError("max_queue above stream_maxlen would let MAXLEN trim requests nobody has read")


class QueueFull(Exception):
    """The queue holds max_queue outstanding requests: answer "busy" instead of queueing."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"queue is full ({depth} outstanding, limit {limit})")
        self.depth = depth
        self.limit = limit


class RequestQueue(RequestClaims):
    """Submit side (bot) and, inherited from RequestClaims, claim/answer side (workers) of the request streams."""

    def __init__(self, redis: Redis, config: QueueConfig) -> None:
        super().__init__(redis, config)
        self._submit_script = redis.register_script(_SUBMIT_LUA)

    # -- bot side -------------------------------------------------------------------------------

    async def submit(self, request: JokeRequest) -> str:
        """Queue a request and return its stream entry id; raise QueueFull above max_queue."""
        entry_id = await self._submit_script(
            keys=[*self.keys.request_streams, self.keys.requests(request.priority)],
            args=[self.config.max_queue, self.config.stream_maxlen, DATA_FIELD, request.model_dump_json()],
        )
        if entry_id is None:
            raise QueueFull(await self.depth(), self.config.max_queue)
        return entry_id

    async def depth(self) -> int:
        """Outstanding requests: queued plus in flight (acked ones are deleted)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.keys.request_streams:
                pipe.xlen(stream)
            return sum(await pipe.execute())

    # -- shared state: active size and heartbeats -----------------------------------------------

    async def get_active_size(self) -> str | None:
        return await self._redis.hget(self.keys.active_size, "size")

    async def set_active_size(self, size: str, by_user: int | str | None) -> None:
        if size not in CONCRETE_SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {CONCRETE_SIZES}")
        mapping = {"size": size, "by_user": "" if by_user is None else str(by_user), "at": str(time.time())}
        await self._redis.hset(self.keys.active_size, mapping=mapping)

    async def publish_heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.worker(info.worker_id), info.model_dump_json(), px=int(ttl_s * 1000))
            pipe.zadd(self.keys.worker_registry, {info.worker_id: now_ms + int(ttl_s * 1000)})
            pipe.zremrangebyscore(self.keys.worker_registry, "-inf", now_ms)  # forget the long dead
            await pipe.execute()

    async def remove_heartbeat(self, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker(worker_id))
            pipe.zrem(self.keys.worker_registry, worker_id)
            await pipe.execute()

    async def live_workers(self) -> list[WorkerInfo]:
        # One ZRANGE instead of a multi-call SCAN, which can miss keys when Redis restarts mid-scan.
        ids = await self._redis.zrangebyscore(self.keys.worker_registry, int(time.time() * 1000), "+inf")
        if not ids:
            return []
        values = await self._redis.mget([self.keys.worker(worker_id) for worker_id in ids])
        workers = [WorkerInfo.model_validate_json(value) for value in values if value is not None]
        return sorted(workers, key=lambda info: info.worker_id)
