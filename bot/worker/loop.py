"""The worker loop: claim a batch from Redis, generate with the engine in a thread (new requests join the
running batch between decode steps; each joke is answered as it ends), repeat."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from bot.common.health import Liveness
from bot.common.logs import log_event
from bot.common.tasks import cancel_and_wait
from bot.queue.claims import ClaimedBatch, ClaimedRequest
from bot.queue.client import RequestQueue
from bot.queue.connection import is_outage
from bot.queue.protocol import ACTIVE_SIZE, JokeRequest, JokeResult, WorkerInfo
from bot.worker.callbacks import EarlyAnswers, JoiningRequests, PartialPublisher, ok_result
from bot.worker.config import WorkerConfig
from bot.worker.engine_api import Engine, GenerationOutput, Job

if TYPE_CHECKING:
    from bot.common.metrics import Metrics

log = logging.getLogger(__name__)
# How often a running batch looks for a dead worker's requests to take over (at most; half of claim_idle_ms if less).
RECLAIM_LOOK_S = 0.25


class _Abandoned(Exception):
    """The grace period ran out while the engine was still generating."""


class Worker:
    def __init__(self, queue: RequestQueue, engine: Engine, config: WorkerConfig,
                 metrics: Metrics | None = None) -> None:
        self.queue = queue
        self.engine = engine
        self.config = config
        self.metrics = metrics  # None: not exported
        self.processed = 0
        self.abandoned = False  # a batch was handed back while its generation thread still runs
        self._stopping = asyncio.Event()
        self._in_flight: list[ClaimedRequest] = []
        # Claimed while a batch of another size was running: served by the next batch.
        self._carry: list[ClaimedRequest] = []
        self._alone: list[ClaimedRequest] = []  # after a failed batch, waiting for their turn alone
        self._batch_active_size: str | None = None  # the active size the running batch resolved "active" to
        self._next_reclaim_in_batch = 0.0  # monotonic time a running batch next looks for dead workers' requests
        self._started_at = time.time()
        self._liveness = Liveness()  # for /healthz: the claim loop went round, Redis answered
        # One dedicated thread: generate calls never overlap, and asyncio.run does not wait for it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; the current batch gets shutdown_grace_s to finish, else it is handed back."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        await self.queue.ensure_groups()
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        log.info("worker %s started; sizes %s", self.config.worker_id, self.engine.available_sizes())
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once()
                    self._liveness.redis_answered()
                except RedisError as error:
                    if not is_outage(error):
                        raise
                    # Unreachable, or refusing writes (a full disk under the AOF): what this worker could not
                    # finish stays claimed, and is reclaimed and answered once Redis takes writes again.
                    log.warning("Redis unavailable (%s); retrying", error)
                    await self._sleep_unless_stopping(1.0)
                self._liveness.loop_went_round()
        finally:
            await cancel_and_wait(heartbeat)
            with suppress(RedisError):
                if self._carry or self._alone:  # claimed for a batch that will not run: straight back to the queue
                    await self.queue.release(self._carry + self._alone, self.config.worker_id, penalize=False)
                    self._carry, self._alone = [], []
            with suppress(RedisError):
                await self.queue.remove_heartbeat(self.config.worker_id)
            self._executor.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped after %d requests", self.config.worker_id, self.processed)

    async def run_once(self) -> int:
        """Claim and serve one batch; returns how many requests were answered or handed back."""
        carry, self._carry = self._carry, []
        wanted = self.config.batch_size - len(carry)
        batch = (await self.queue.claim_batch(self.config.worker_id, wanted, 0 if carry else self.config.block_ms)
                 if wanted > 0 else ClaimedBatch([], []))
        self._note_answered(batch.answered)
        ready = carry + batch.ready
        if ready:
            await self._serve(ready)
        return len(batch.answered) + len(ready)

    def _note_answered(self, answered: list[JokeResult]) -> None:
        for result in answered:
            self._log_result(result)
            if self.metrics is not None:  # expired or dead-lettered by the queue: the request's kind is gone
                self.metrics.request_finished("unknown", result.size, result.status)

    async def _join_running_batch(self, free: int, size: str, group: list[ClaimedRequest],
                                  partials: PartialPublisher, early: EarlyAnswers) -> list[Job]:
        """Claim up to `free` new requests for the running batch of `size`; return the jobs that join it.

        None join once the worker is stopping or an admin switched the active size (the batch then
        drains, so the switch takes effect); a request for another size waits for the next batch.
        """
        if self._stopping.is_set():
            return []
        if (await self.queue.get_active_size() or self.config.default_size) != self._batch_active_size:
            return []
        # New requests, and dead workers' idle ones (never this worker's own: its batch is still running them).
        # Not at every poll: the look costs a few Redis round trips. But often, since a dead worker's requests
        # wait claim_idle_ms plus this for their joke (the recovery the fault drill measures).
        reclaim = time.monotonic() >= self._next_reclaim_in_batch
        if reclaim:
            self._next_reclaim_in_batch = time.monotonic() + min(self.queue.config.claim_idle_ms / 2000, RECLAIM_LOOK_S)
        batch = await self.queue.claim_batch(self.config.worker_id, free, 0, reclaim="others" if reclaim else False)
        self._note_answered(batch.answered)
        jobs = []
        for claimed in batch.ready:
            if _size_of(claimed, self._batch_active_size) != size:
                self._carry.append(claimed)
                continue
            group.append(claimed)
            partials.add(claimed)
            early.add(claimed)
            jobs.append(_job(claimed.request))
        return jobs

    # -- one batch ------------------------------------------------------------------------------

    async def _serve(self, ready: list[ClaimedRequest]) -> None:
        # Read at every batch boundary, so an admin's switch reaches every worker within one batch.
        active = await self.queue.get_active_size() or self.config.default_size
        self._batch_active_size = active
        if self.metrics is not None:
            self.metrics.queue_lag.set(max(0.0, time.time() - min(c.request.created_at for c in ready)))
        available = set(self.engine.available_sizes())
        by_size: dict[str, list[ClaimedRequest]] = {}
        for claimed in ready:
            size = _size_of(claimed, active)
            if size in available:
                by_size.setdefault(size, []).append(claimed)
            else:
                result = JokeResult.answer(claimed.request, "unknown_size", self.config.worker_id, size=size,
                                           error=f"size {size!r} not loaded; available {sorted(available)}")
                await self._answer(claimed, result)
        for size, group in by_size.items():
            await self._generate_and_answer(size, group)

    async def _generate_and_answer(self, size: str, group: list[ClaimedRequest]) -> None:
        worker_id = self.config.worker_id
        jobs = [_job(claimed.request) for claimed in group]
        loop = asyncio.get_running_loop()
        partials = PartialPublisher(loop, self.queue, worker_id, group, self.config.partial_interval_s)
        # A row that finishes early is answered at once, not when the batch's longest joke ends.
        early = EarlyAnswers(loop, self._answer, worker_id, size, group, partials)
        # Between decode steps, waiting requests of this size join the running batch (continuous batching).
        joining = JoiningRequests(loop, functools.partial(self._join_running_batch, size=size, group=group,
                                                          partials=partials, early=early), self.config.batch_size)
        self._in_flight = group  # the same list: requests that join are kept fresh too
        started = time.monotonic()
        try:
            future = self._executor.submit(self.engine.generate, size, jobs, partials, early, joining)
            outputs = await self._wait_for_generation(future)
        except _Abandoned:
            self.abandoned = True
            released = await self.queue.release(await early.unanswered(), worker_id, penalize=False)
            log.warning("shutdown: handed back %d unfinished requests for reclaim", released)
            return
        except asyncio.CancelledError:
            await asyncio.shield(self._release_unanswered(early, penalize=False))
            raise
        except Exception:
            unanswered = await early.unanswered()
            if len(unanswered) == 1:
                # A bug or a bad input: retry elsewhere; max_deliveries ends a poison request in dead letters.
                log.exception("generation failed for 1 request (size %s); released for retry", size)
                await self.queue.release(unanswered, worker_id, penalize=True)
                return
            # One bad request must not fail the others: each is tried alone, so only one that fails alone is
            # released (and, failing every time, dead-lettered after max_deliveries).
            log.exception("generation failed for %d requests (size %s); trying each alone", len(unanswered), size)
            outputs = None
        finally:
            self._in_flight = []
        if outputs is None:
            await partials.drain()
            self._alone = list(unanswered)
            while self._alone:
                await self._generate_and_answer(size, [self._alone.pop(0)])
            return
        if self.metrics is not None:
            self.metrics.batch_generated(size, len(outputs), time.monotonic() - started,
                                         sum(output.new_tokens for output in outputs),
                                         sum(output.cut for output in outputs))
        remaining = {c.request.request_id for c in await early.unanswered()}
        await partials.drain()  # so no partial lands after its final result
        by_id: dict[str, GenerationOutput] = {output.request_id: output for output in outputs}
        for claimed in group:
            if claimed.request.request_id not in remaining:
                continue
            output = by_id.get(claimed.request.request_id)
            if output is None:
                log.error("engine returned no output for %s; released for retry", claimed.request.request_id)
                await self.queue.release([claimed], worker_id, penalize=True)
                continue
            await self._answer(claimed, ok_result(claimed, output, worker_id, size))

    async def _release_unanswered(self, early: EarlyAnswers, *, penalize: bool) -> None:
        await self.queue.release(await early.unanswered(), self.config.worker_id, penalize=penalize)

    async def _wait_for_generation(self, future: Future) -> list[GenerationOutput]:
        generation = asyncio.wrap_future(future)
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({generation, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not generation.done():
            done, _ = await asyncio.wait({generation}, timeout=self.config.shutdown_grace_s)
            if not done:
                raise _Abandoned
        return generation.result()

    async def _answer(self, claimed: ClaimedRequest, result: JokeResult) -> None:
        if await self.queue.publish_result(result, claimed):
            self.processed += 1
            self._log_result(result)
            if self.metrics is not None:
                self.metrics.request_finished(claimed.request.kind, result.size, result.status, result.latency_s)
        else:
            log.warning("request %s was reclaimed by another worker; dropping our result", result.request_id)

    # -- heartbeat and logging ------------------------------------------------------------------

    def info(self, queue_lag: int = 0) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.config.worker_id, host=socket.gethostname(), pid=os.getpid(),
            device=self.config.device, loaded_sizes=sorted(self.engine.available_sizes()),
            batch_size=self.config.batch_size, processed=self.processed, queue_lag=queue_lag,
            started_at=self._started_at,
        )

    def health(self, stale_after_s: float) -> dict[str, Any]:
        """Healthy while Redis answered and the claim loop went round within the last `stale_after_s`.

        A batch that generates for longer than that also reads as unhealthy: a hung engine looks the same.
        """
        report = self._liveness.report(stale_after_s)
        return {**report, "healthy": report["healthy"] and not self._stopping.is_set(),
                "worker_id": self.config.worker_id, "stopping": self._stopping.is_set(), "processed": self.processed,
                "sizes": sorted(self.engine.available_sizes()), "device": self.config.device}

    async def _heartbeat_loop(self) -> None:
        # Often enough to keep both the heartbeat key and the in-flight requests' idle time fresh.
        interval = min(self.config.heartbeat_ttl_s, self.queue.config.claim_idle_ms / 1000) / 3
        while True:
            try:
                depth = await self.queue.depth()
                await self.queue.publish_heartbeat(self.info(depth), self.config.heartbeat_ttl_s)
                self._liveness.redis_answered()
                if self.metrics is not None:
                    self.metrics.queue_length.set(depth)
                # Past its deadline a request is no longer kept fresh: if this worker is hung, another
                # one reclaims it and answers "expired".
                fresh = [c for c in self._in_flight + self._carry + self._alone if c.request.deadline > time.time()]
                if fresh:
                    await self.queue.touch(fresh, self.config.worker_id)
            except RedisError as error:
                log.warning("heartbeat failed: %s", error)
            await asyncio.sleep(interval)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _log_result(self, result: JokeResult) -> None:
        fields = {
            "request_id": result.request_id, "status": result.status, "size": result.size,
            "latency_s": round(result.latency_s, 3), "tokens": result.tokens, "worker_id": result.worker_id,
        }
        if result.error:
            fields["error"] = result.error
        log_event(log, "request", fields, level=logging.INFO if result.status == "ok" else logging.WARNING)


def _size_of(claimed: ClaimedRequest, active: str) -> str:
    """The model size a request asks for, "active" resolved to the size active for the batch."""
    return active if claimed.request.size == ACTIVE_SIZE else claimed.request.size


def _job(request: JokeRequest) -> Job:
    sampling = request.sampling
    return Job(
        request_id=request.request_id, prompt=request.prompt, top_k=sampling.top_k,
        temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, seed=sampling.seed,
    )
