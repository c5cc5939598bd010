"""Reading the results stream in tests, and the bot's records of the requests it waits for."""
from __future__ import annotations

import asyncio

from bot.queue.protocol import JokeRequest, JokeResult
from bot.queue.results import ResultReader
from bot.telegram.outstanding import Outstanding, OutstandingRequests


async def final_results(reader: ResultReader, count: int, timeout_s: float = 3.0) -> list[JokeResult]:
    results: list[JokeResult] = []
    async with asyncio.timeout(timeout_s):
        while len(results) < count:
            for item in await reader.read(block_ms=50):
                if item.result.is_final:
                    results.append(item.result)
                    await reader.ack(item)
    return results


async def track(outstanding: OutstandingRequests, request: JokeRequest, give_up_at: float,
                update_id: int | None = None) -> Outstanding:
    """The bot's record of `request`, written alone (the bot writes it in the transaction that submits it)."""
    async with outstanding._redis.pipeline(transaction=True) as pipe:
        record = outstanding.track_in(pipe, request, give_up_at, update_id)
        await pipe.execute()
    return record
