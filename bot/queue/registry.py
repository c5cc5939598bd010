"""State the bot and the workers share besides the streams (protocol: bot/queue/protocol.py): the active
size an admin chose, and the workers' heartbeats."""
from __future__ import annotations

import time

from bot.queue.protocol import CONCRETE_SIZES, WorkerInfo
from bot.queue.streams import StreamsClient


class WorkerRegistry(StreamsClient):
    """The active size (read by workers at every batch) and who is alive (heartbeats with a TTL)."""

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
