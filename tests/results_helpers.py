"""Reading the results stream in tests."""
from __future__ import annotations

import asyncio

from bot.queue.protocol import JokeResult
from bot.queue.results import ResultReader


async def final_results(reader: ResultReader, count: int, timeout_s: float = 3.0) -> list[JokeResult]:
    results: list[JokeResult] = []
    async with asyncio.timeout(timeout_s):
        while len(results) < count:
            for item in await reader.read(block_ms=50):
                if item.result.is_final:
                    results.append(item.result)
                    await reader.ack(item)
    return results
