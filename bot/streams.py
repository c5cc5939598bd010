"""Redis Streams plumbing shared by the request side (bot/queue.py, bot/claims.py) and the result
side (bot/results.py) of the protocol described in bot/protocol.py."""
from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


def stream_entries(response: Any) -> list[tuple[str, str, dict[str, str] | None]]:
    """Flatten an XREAD(GROUP) reply: RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}."""
    if not response:
        return []
    if isinstance(response, dict):
        pairs = [(stream, value[0] if value and isinstance(value[0], list) else value) for stream, value in response.items()]
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
