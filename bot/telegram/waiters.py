"""Where an inline query waits for its variants: the submit side (`JokeService`) expects results that the
delivery side (`DeliveryLoop`) resolves, without either knowing the other."""
from __future__ import annotations

import asyncio

from bot.queue.protocol import JokeResult


class InlineWaiters:
    """Inline queries wait in-process for their variants: after a restart nobody waits anymore."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[JokeResult]] = {}

    def expect(self, request_id: str) -> asyncio.Future[JokeResult]:
        future: asyncio.Future[JokeResult] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        return future

    def discard(self, request_id: str) -> None:
        self._futures.pop(request_id, None)

    def resolve(self, result: JokeResult) -> None:
        future = self._futures.get(result.request_id)
        if future is not None and result.is_final and not future.done():
            future.set_result(result)
