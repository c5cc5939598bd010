"""The bot's side of the request streams (protocol: bot/queue/protocol.py): submit with backpressure."""
from __future__ import annotations

from typing import Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bot.queue.config import QueueConfig
from bot.queue.protocol import DATA_FIELD, JokeRequest
from bot.queue.streams import StreamsClient

# Atomic so that two bots cannot both squeeze under the limit.
_SUBMIT_LUA = """
local depth = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])
if depth >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[4])
"""


class QueueFull(Exception):
    """The queue holds max_queue outstanding requests: answer "busy" instead of queueing."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"queue is full ({depth} outstanding, limit {limit})")
        self.depth = depth
        self.limit = limit


class RequestSubmitter(StreamsClient):
    """Queue requests, refusing new work above max_queue; and say how much work is outstanding."""

    def __init__(self, redis: Redis, config: QueueConfig) -> None:
        super().__init__(redis, config)
        self._submit_script = redis.register_script(_SUBMIT_LUA)

    async def submit(self, request: JokeRequest, along: Callable[[Pipeline], object] | None = None) -> str:
        """Queue a request and return its stream entry id; raise QueueFull above max_queue.

        `along(pipeline)` adds writes that reach Redis in one transaction (MULTI/EXEC) with the request: a bot
        killed in between leaves both or neither, never a record of a request nobody queued. They are made
        even when the queue is full: the caller undoes them on QueueFull.
        """
        keys = [*self.keys.request_streams, self.keys.requests(request.priority)]
        args = [self.config.max_queue, self.config.stream_maxlen, DATA_FIELD, request.model_dump_json()]
        if along is None:
            entry_id = await self._submit_script(keys=keys, args=args)
        else:
            async with self._redis.pipeline(transaction=True) as pipe:
                along(pipe)
                await self._submit_script(keys=keys, args=args, client=pipe)
                entry_id = (await pipe.execute())[-1]
        if entry_id is None:
            raise QueueFull(await self.depth(), self.config.max_queue)
        return entry_id

    async def depth(self) -> int:
        """Outstanding requests: queued plus in flight (acked ones are deleted)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.keys.request_streams:
                pipe.xlen(stream)
            return sum(await pipe.execute())
