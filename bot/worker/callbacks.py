"""A batch's results published from the engine's thread while it still generates.

The engine calls back from its own thread; these hand the work to the worker's event loop:
throttled partial texts for streaming, and each request's final answer the moment its row
finishes, after that request's own partials (a partial must never follow its final result).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import suppress

from redis.exceptions import RedisError

from bot.queue.claims import ClaimedRequest
from bot.queue.client import RequestQueue
from bot.queue.protocol import JokeResult
from bot.worker.engine_api import GenerationOutput, Job

log = logging.getLogger(__name__)


def ok_result(claimed: ClaimedRequest, output: GenerationOutput, worker_id: str, size: str) -> JokeResult:
    return JokeResult.answer(claimed.request, "ok", worker_id, text=output.text, size=size,
                             tokens=output.new_tokens, forward_passes=output.forward_passes)



class PartialPublisher:
    """The engine's on_partial callback: throttled, and thread-safe by handing work to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: RequestQueue, worker_id: str,
                 group: list[ClaimedRequest], interval_s: float) -> None:
        self._loop = loop
        self._queue = queue
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._requests = {c.request.request_id: c.request for c in group if c.request.stream_partials}
        self._last_sent: dict[str, float] = {}
        self._pending: list[tuple[str, Future]] = []

    def add(self, claimed: ClaimedRequest) -> None:
        """A request that joined the running batch."""
        if claimed.request.stream_partials:
            self._requests[claimed.request.request_id] = claimed.request

    def __call__(self, request_id: str, text_so_far: str) -> None:
        request = self._requests.get(request_id)
        now = time.monotonic()
        if request is None or now - self._last_sent.get(request_id, float("-inf")) < self._interval_s:
            return
        self._last_sent[request_id] = now
        result = JokeResult.answer(request, "partial", self._worker_id, text=text_so_far)
        with suppress(RuntimeError):  # the loop is gone: the worker is exiting, partials don't matter
            self._pending.append((request_id, asyncio.run_coroutine_threadsafe(self._queue.publish_result(result),
                                                                               self._loop)))

    async def drain(self, request_id: str | None = None) -> None:
        """Wait until the partials sent so far (of `request_id`, or of every request) have landed."""
        for rid, future in list(self._pending):
            if request_id is not None and rid != request_id:
                continue
            try:
                await asyncio.wrap_future(future)
            except RedisError as error:
                log.warning("partial result not published: %s", error)


class EarlyAnswers:
    """The engine's on_done callback: answers a request as soon as its row finishes.

    Called from the engine's thread; the answer runs on the event loop, after that request's own
    partials have landed (a partial must never follow its final result). Whatever was not answered
    this way (the callback failed, or generation stopped first) is answered or released by the
    worker once the batch is over, as before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: Callable[[ClaimedRequest, JokeResult], Awaitable[None]],
                 worker_id: str, size: str, group: list[ClaimedRequest], partials: PartialPublisher) -> None:
        self._loop, self._answer_with, self._worker_id = loop, answer, worker_id
        self._size, self._partials = size, partials
        self._group = group
        self._claimed = {c.request.request_id: c for c in group}
        self._answered: set[str] = set()
        self._pending: list[Future] = []

    def add(self, claimed: ClaimedRequest) -> None:
        """A request that joined the running batch (appended to the group by the caller)."""
        self._claimed[claimed.request.request_id] = claimed

    def __call__(self, output: GenerationOutput) -> None:
        claimed = self._claimed.get(output.request_id)
        if claimed is None:
            return
        with suppress(RuntimeError):  # the loop is gone: the worker is exiting; reclaim answers it
            self._pending.append(asyncio.run_coroutine_threadsafe(self._answer(claimed, output), self._loop))

    async def _answer(self, claimed: ClaimedRequest, output: GenerationOutput) -> None:
        await self._partials.drain(claimed.request.request_id)
        await self._answer_with(claimed, ok_result(claimed, output, self._worker_id, self._size))
        self._answered.add(claimed.request.request_id)

    async def unanswered(self) -> list[ClaimedRequest]:
        """The batch's requests not answered early, once every early answer under way has settled."""
        for future in list(self._pending):
            try:
                await asyncio.wrap_future(future)
            except RedisError as error:  # answered again (or released) with the rest of the batch
                log.warning("early answer not published: %s", error)
        return [c for c in self._group if c.request.request_id not in self._answered]


class JoiningRequests:
    """The engine's more_jobs callback: between decode steps, asks the worker for requests to join the batch.

    Called from the engine's thread; `join(free_rows)` runs on the worker's event loop and returns the
    jobs it added to the batch. A failed or slow join only means the batch goes on as it is.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, join: Callable[[int], Awaitable[list[Job]]],
                 capacity: int) -> None:
        self._loop, self._join, self._capacity = loop, join, capacity

    def __call__(self, rows_in_batch: int) -> list[Job]:
        free = self._capacity - rows_in_batch
        if free <= 0:
            return []
        try:
            return asyncio.run_coroutine_threadsafe(self._join(free), self._loop).result(timeout=5)
        except Exception as error:  # noqa: BLE001 - see the class docstring
            log.warning("no requests joined the running batch: %s", error)
            return []
