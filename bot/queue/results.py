"""The bot's side of the results stream (see bot/queue/protocol.py): `ResultReader` reads what workers
answered, deduplicated by request id, in the bot's own consumer group. The client must be created
with decode_responses=True.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bot.queue.config import QueueConfig
from bot.queue.protocol import DATA_FIELD, RESULT_GROUP, JokeResult
from bot.queue.streams import StreamsClient, create_group, is_nogroup, stream_entries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedResult:
    entry_id: str
    result: JokeResult


class ResultReader(StreamsClient):
    """The bot's view of the results stream: its own consumer group, deduped by request_id.

    Final results must be acked with `ack` once handled; until then they are re-read after a
    restart. Partial results are acked on read and dropped once the final one has been seen.
    """

    def __init__(self, redis: Redis, config: QueueConfig, consumer: str = "bot") -> None:
        super().__init__(redis, config)
        self.consumer = consumer
        # After a restart, first re-read what this consumer read but never acked.
        self._pending_cursor: str | None = "0"

    def reread_pending(self) -> None:
        """The next reads hand back this consumer's unacknowledged results again (from the start of its pending
        list), then new ones: for results whose delivery failed, e.g. while Redis refused writes."""
        self._pending_cursor = "0"

    async def ensure_group(self) -> None:
        await create_group(self._redis, self.keys.results, RESULT_GROUP)

    async def read(self, count: int = 50, block_ms: int = 1000) -> list[ReceivedResult]:
        try:
            entries = await self._read_entries(count, block_ms)
        except ResponseError as error:
            if not is_nogroup(error):
                raise
            await self.ensure_group()
            entries = await self._read_entries(count, block_ms)
        return await self._dedupe(entries)

    async def _read_entries(self, count: int, block_ms: int) -> list[tuple[str, str, dict[str, str] | None]]:
        if self._pending_cursor is not None:
            reply = await self._redis.xreadgroup(
                RESULT_GROUP, self.consumer, {self.keys.results: self._pending_cursor}, count=count
            )
            entries = stream_entries(reply)
            if entries:
                self._pending_cursor = entries[-1][1]
                return entries
            self._pending_cursor = None
        reply = await self._redis.xreadgroup(
            RESULT_GROUP, self.consumer, {self.keys.results: ">"}, count=count,
            block=block_ms if block_ms > 0 else None,
        )
        return stream_entries(reply)

    async def _dedupe(self, entries: list[tuple[str, str, dict[str, str] | None]]) -> list[ReceivedResult]:
        parsed: list[ReceivedResult] = []
        for _, entry_id, fields in entries:
            try:
                parsed.append(ReceivedResult(entry_id, JokeResult.model_validate_json((fields or {})[DATA_FIELD])))
            except (KeyError, ValidationError) as error:
                log.error("dropping unreadable result %s: %s", entry_id, error)
                await self._xack(entry_id)
        finals_here = {item.result.request_id for item in parsed if item.result.is_final}
        latest_partial = {item.result.request_id: item.entry_id for item in parsed if not item.result.is_final}
        fresh: list[ReceivedResult] = []
        for item in parsed:
            request_id = item.result.request_id
            done_key = self.keys.result_done(request_id)
            if item.result.is_final:
                first = await self._redis.set(done_key, item.entry_id, nx=True, ex=self.config.dedupe_ttl_s)
                # The key holding this very entry id means we crashed before acking it: deliver again.
                if first or await self._redis.get(done_key) == item.entry_id:
                    fresh.append(item)
                else:
                    await self._xack(item.entry_id)
                continue
            await self._xack(item.entry_id)
            superseded = request_id in finals_here or latest_partial[request_id] != item.entry_id
            if not superseded and not await self._redis.exists(done_key):
                fresh.append(item)
        return fresh

    async def still_pending(self, item: ReceivedResult) -> bool:
        """False once the result was acknowledged: a re-read racing with its delivery's ack (see reread_pending)."""
        entries = await self._redis.xpending_range(self.keys.results, RESULT_GROUP, min=item.entry_id,
                                                   max=item.entry_id, count=1)
        return bool(entries)

    async def ack(self, item: ReceivedResult) -> None:
        """Acknowledge a handled final result (partials are already acked)."""
        await self._xack(item.entry_id)

    async def _xack(self, entry_id: str) -> None:
        await self._redis.xack(self.keys.results, RESULT_GROUP, entry_id)
