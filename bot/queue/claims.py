"""The workers' side of the request streams (protocol: bot/queue/protocol.py): claim new requests and
reclaim those of dead workers (XAUTOCLAIM), answer them, hand them back, and dead-letter the ones
that cannot be served (unparseable, or delivered more than max_deliveries times).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bot.queue.config import QueueConfig
from bot.queue.protocol import DATA_FIELD, WORKER_GROUP, DeadLetter, JokeRequest, JokeResult
from bot.queue.streams import StreamsClient, create_group, is_nogroup, stream_entries

log = logging.getLogger(__name__)

# Under contention, one new request in this many is read from the normal stream ahead of the high one.
NORMAL_EVERY = 4

# Write the answer (and the dead letter) and ack+delete the request in one step, but only if this
# consumer still owns it: a worker whose request was reclaimed must not answer it a second time.
_FINISH_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
if ARGV[6] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', ARGV[7], ARGV[6]) end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', ARGV[7], ARGV[4]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# Reset the idle time (and optionally the delivery count) of requests this consumer still owns.
# idle 0 = "still working on it"; idle >= claim_idle_ms = "take it back now".
_OWN_LUA = """
local kept = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local count = tonumber(ARGV[i + 1])
    if count < 0 then count = p[1][4] end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""


@dataclass(frozen=True)
class ClaimedRequest:
    stream: str
    entry_id: str
    request: JokeRequest
    deliveries: int  # 1 on first delivery, +1 per reclaim


@dataclass
class ClaimedBatch:
    ready: list[ClaimedRequest]
    answered: list[JokeResult]  # expired / dead-lettered requests the queue already answered and acked


@dataclass(frozen=True)
class _RawEntry:
    stream: str
    entry_id: str
    fields: dict[str, str] | None  # None: the entry was trimmed while pending
    deliveries: int


class RequestClaims(StreamsClient):
    """Claim, answer, keep fresh and hand back requests: what a worker does with the request streams."""

    def __init__(self, redis: Redis, config: QueueConfig) -> None:
        super().__init__(redis, config)
        self._finish_script = redis.register_script(_FINISH_LUA)
        self._own_script = redis.register_script(_OWN_LUA)
        self._read = 0  # new requests this worker has read, for the normal stream's share (_read_new)

    async def ensure_groups(self) -> None:
        """Idempotent. Groups start at id 0 so requests submitted before any worker existed are served."""
        for stream in self.keys.request_streams:
            await create_group(self._redis, stream, WORKER_GROUP)

    async def claim_batch(self, consumer: str, max_items: int, block_ms: int = 0, *,
                          reclaim: bool | Literal["others"] = True) -> ClaimedBatch:
        """Reclaim requests of dead workers, then read new ones, high priority first (mostly: `_read_new`).

        Requests retried more than max_deliveries times or past their deadline are answered here
        and come back in `answered`; the rest, at most max_items, come back in `ready`.
        reclaim="others" is for a running batch, whose own in-flight entries could look idle to
        XAUTOCLAIM between heartbeats and must not be claimed a second time: it reclaims only other
        consumers' idle requests. (Waiting for the batch to end would leave a dead worker's requests
        unanswered for as long as a busy worker's batch keeps taking new ones.) False: new requests only.
        """
        try:
            raw = await self._claim_raw(consumer, max_items, block_ms, reclaim)
        except ResponseError as error:
            if not is_nogroup(error):
                raise
            log.warning("consumer group missing (Redis flushed or restarted without AOF?); recreating")
            await self.ensure_groups()
            raw = await self._claim_raw(consumer, max_items, block_ms, reclaim)
        return await self._sort_out(consumer, raw)

    async def _claim_raw(self, consumer: str, max_items: int, block_ms: int,
                         reclaim: bool | Literal["others"] = True) -> list[_RawEntry]:
        if reclaim == "others":
            raw = await self._reclaim_from_others(consumer, max_items)
        else:
            raw = await self._reclaim(consumer, max_items) if reclaim else []
        if len(raw) < max_items:
            raw += await self._read_new(consumer, max_items - len(raw), 0 if raw else block_ms)
        return raw

    async def _reclaim(self, consumer: str, max_items: int) -> list[_RawEntry]:
        raw: list[_RawEntry] = []
        for stream in self.keys.request_streams:
            if len(raw) >= max_items:
                break
            reply = await self._redis.xautoclaim(
                stream, WORKER_GROUP, consumer, self.config.claim_idle_ms, "0-0", count=max_items - len(raw)
            )
            claimed = [(entry_id, fields) for entry_id, fields in reply[1]]
            if not claimed:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id, _ in claimed:
                    pipe.xpending_range(stream, WORKER_GROUP, entry_id, entry_id, 1)
                pending = await pipe.execute()
            for (entry_id, fields), info in zip(claimed, pending):
                deliveries = info[0]["times_delivered"] if info else 1
                raw.append(_RawEntry(stream, entry_id, fields, deliveries))
        return raw

    async def _reclaim_from_others(self, consumer: str, max_items: int) -> list[_RawEntry]:
        """Like `_reclaim`, but only requests idle in another consumer's hands."""
        raw: list[_RawEntry] = []
        for stream in self.keys.request_streams:
            if len(raw) >= max_items:
                break
            others = [c["name"] for c in (await self._redis.xpending(stream, WORKER_GROUP))["consumers"]
                      if c["name"] != consumer]
            theirs = []
            for other in others:  # per consumer: a long list of this worker's own cannot hide theirs
                theirs += await self._redis.xpending_range(stream, WORKER_GROUP, "-", "+", max_items - len(raw),
                                                           consumername=other, idle=self.config.claim_idle_ms)
            theirs = theirs[: max_items - len(raw)]
            if not theirs:
                continue
            claimed = await self._redis.xclaim(stream, WORKER_GROUP, consumer, self.config.claim_idle_ms,
                                               [p["message_id"] for p in theirs])
            deliveries = {p["message_id"]: p["times_delivered"] + 1 for p in theirs}  # this claim counts too
            raw += [_RawEntry(stream, entry_id, fields, deliveries.get(entry_id, 1)) for entry_id, fields in claimed]
        return raw

    async def _read_new(self, consumer: str, wanted: int, block_ms: int) -> list[_RawEntry]:
        # High priority (inline: the user waits in the input field) first, but not always: a worker that
        # cannot keep up would serve inline queries alone for as long as they keep coming, and a /joke
        # would wait for the load to end. So every NORMAL_EVERY-th request read comes from the normal
        # stream first; a slot it leaves empty goes to the high one, so no debt builds up.
        high, normal = self.keys.request_streams
        owed = (self._read + wanted) // NORMAL_EVERY - self._read // NORMAL_EVERY
        raw: list[_RawEntry] = []
        drained: set[str] = set()  # streams that gave fewer than asked: nothing more to read there now
        for stream, count in ((normal, owed), (high, wanted), (normal, wanted)):
            count = min(count, wanted - len(raw))
            if count <= 0 or stream in drained:
                continue
            reply = await self._redis.xreadgroup(WORKER_GROUP, consumer, {stream: ">"}, count=count)
            read = [_RawEntry(s, entry_id, fields, 1) for s, entry_id, fields in stream_entries(reply)]
            if len(read) < count:
                drained.add(stream)
            raw += read
        raw.sort(key=lambda entry: entry.stream != high)  # within a batch, inline requests still go first
        self._read += len(raw)
        if raw or block_ms <= 0:
            return raw
        streams = {stream: ">" for stream in self.keys.request_streams}
        reply = await self._redis.xreadgroup(WORKER_GROUP, consumer, streams, count=wanted, block=block_ms)
        order = self.keys.request_streams
        raw = sorted(
            (_RawEntry(s, entry_id, fields, 1) for s, entry_id, fields in stream_entries(reply)),
            key=lambda entry: order.index(entry.stream),
        )
        # COUNT applies per stream, so both streams waking at once can overshoot; hand the extra back.
        extra = raw[wanted:]
        if extra:
            await self._set_ownership(consumer, [(e.stream, e.entry_id, 0) for e in extra], self.config.claim_idle_ms)
        self._read += min(len(raw), wanted)
        return raw[:wanted]

    async def _sort_out(self, consumer: str, raw: list[_RawEntry]) -> ClaimedBatch:
        batch = ClaimedBatch([], [])
        now = time.time()
        for entry in raw:
            if entry.fields is None:  # trimmed by MAXLEN while pending: nothing left to answer
                await self._redis.xack(entry.stream, WORKER_GROUP, entry.entry_id)
                continue
            payload = entry.fields.get(DATA_FIELD, "")
            try:
                request = JokeRequest.model_validate_json(payload)
            except ValidationError as error:
                log.error("unparseable request %s in %s, dead-lettering: %s", entry.entry_id, entry.stream, error)
                await self._finish(entry, consumer, None, self._dead_letter(entry, consumer, "invalid"))
                continue
            claimed = ClaimedRequest(entry.stream, entry.entry_id, request, entry.deliveries)
            if entry.deliveries > self.config.max_deliveries:
                result = JokeResult.answer(request, "failed", consumer, error="max_deliveries")
                if await self._finish(entry, consumer, result, self._dead_letter(entry, consumer, "max_deliveries")):
                    batch.answered.append(result)
            elif request.deadline < now:
                result = JokeResult.answer(request, "expired", consumer)
                if await self._finish(entry, consumer, result, None):
                    batch.answered.append(result)
            else:
                batch.ready.append(claimed)
        return batch

    def _dead_letter(self, entry: _RawEntry, consumer: str, reason: str) -> DeadLetter:
        payload = (entry.fields or {}).get(DATA_FIELD, "")
        return DeadLetter(
            stream=entry.stream, entry_id=entry.entry_id, reason=reason,
            deliveries=entry.deliveries, payload=payload, worker_id=consumer,
        )

    async def _finish(
        self, entry: _RawEntry | ClaimedRequest, consumer: str, result: JokeResult | None, dead: DeadLetter | None
    ) -> bool:
        done = await self._finish_script(
            keys=[entry.stream, self.keys.results, self.keys.dead_letter],
            args=[
                WORKER_GROUP, consumer, entry.entry_id,
                result.model_dump_json() if result else "",
                self.config.stream_maxlen,
                dead.model_dump_json() if dead else "",
                DATA_FIELD,
            ],
        )
        return bool(done)

    async def publish_result(self, result: JokeResult, claimed: ClaimedRequest | None = None) -> bool:
        """Publish a result. A final one also acks `claimed`, atomically, if result.worker_id still owns it.

        Returns False when the request was reclaimed by another worker meanwhile (the result is dropped).
        Partial results are simply appended: best effort, nothing is acked.
        """
        if not result.is_final:
            await self._redis.xadd(
                self.keys.results, {DATA_FIELD: result.model_dump_json()}, maxlen=self.config.stream_maxlen
            )
            return True
        if claimed is None:
            raise ValueError("a final result must say which claimed request it answers")
        return await self._finish(claimed, result.worker_id, result, None)

    async def touch(self, claimed: Iterable[ClaimedRequest], consumer: str) -> int:
        """Mark in-flight requests as fresh so that slow generation is not taken for a dead worker."""
        return await self._set_ownership(consumer, [(c.stream, c.entry_id, -1) for c in claimed], 0)

    async def release(self, claimed: Iterable[ClaimedRequest], consumer: str, *, penalize: bool) -> int:
        """Give requests back for immediate reclaim by any worker.

        penalize=True (generation failed) keeps the delivery count, so a poison request ends in the
        dead-letter stream; penalize=False (shutdown) does not count this delivery.
        """
        owned = [(c.stream, c.entry_id, -1 if penalize else max(0, c.deliveries - 1)) for c in claimed]
        return await self._set_ownership(consumer, owned, self.config.claim_idle_ms)

    async def _set_ownership(self, consumer: str, owned: list[tuple[str, str, int]], idle_ms: int) -> int:
        kept = 0
        for stream in self.keys.request_streams:
            args: list[Any] = [WORKER_GROUP, consumer, idle_ms]
            for entry_stream, entry_id, count in owned:
                if entry_stream == stream:
                    args += [entry_id, count]
            if len(args) > 3:
                kept += await self._own_script(keys=[stream], args=args)
        return kept
