"""Redis Streams plumbing shared by the clients of the protocol described in bot/queue/protocol.py:
the request side (submit, claims, registry) and the result side (results)."""
from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bot.queue.config import QueueConfig
from bot.queue.protocol import StreamKeys


class StreamsClient:
    """What every client of the streams holds: the connection, the config and the names derived from it.

    The client must be created with decode_responses=True.
    """

    def __init__(self, redis: Redis, config: QueueConfig) -> None:
        self._redis = redis
        self.config = config
        self.keys = StreamKeys(config.prefix)


def stream_entries(response: Any) -> list[tuple[str, str, dict[str, str] | None]]:
    """Flatten an XREAD(GROUP) reply: RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}."""
    if not response:
        return []
    if isinstance(response, dict):
        pairs = [(stream, value[0] if value and isinstance(value[0], list) else value)
                 for stream, value in response.items()]
    else:
        pairs = response
    return [(stream, entry_id, fields) for stream, entries in pairs for entry_id, fields in entries]


def is_nogroup(error: ResponseError) -> bool:
    return str(error).startswith("NOGROUP")


async def create_group(redis: Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if not str(error).startswith("BUSYGROUP"):
            raise
