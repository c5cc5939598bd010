"""Continuous batching through the worker: requests queued while a batch runs join it between decode steps.

Real Redis, the real engine on tiny random weights; a gate pauses the engine's first ask for more jobs
until the test has queued them, so the join is deterministic rather than a race with a fast model.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from bot.queue.client import RequestQueue
from bot.queue.protocol import SamplingParams
from bot.worker.config import WorkerConfig
from bot.worker.engine import ModelEngine
from bot.worker.loading import load_source
from bot.worker.loop import Worker, _job
from tests.model_helpers import make_tiny_model_dir
from tests.results_helpers import final_results

CPU = torch.device("cpu")


class JoinGate:
    """A real engine whose first call for more jobs waits until the test has queued them."""

    def __init__(self, engine: ModelEngine) -> None:
        self.engine = engine
        self.asked, self.queued = threading.Event(), threading.Event()

    def available_sizes(self) -> list[str]:
        return self.engine.available_sizes()

    def generate(self, size, jobs, on_partial=None, on_done=None, more_jobs=None):
        def gated(rows_in_batch: int):
            if not self.asked.is_set():
                self.asked.set()
                self.queued.wait(60)
            return more_jobs(rows_in_batch)

        return self.engine.generate(size, jobs, on_partial, on_done, gated if more_jobs else None)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory) -> ModelEngine:
    models = {size: load_source(size, str(make_tiny_model_dir(tmp_path_factory.mktemp(size), seed=i)), CPU)
              for i, size in enumerate(("nano", "mini"))}
    return ModelEngine(models, CPU)


def worker_for(queue: RequestQueue, engine) -> Worker:
    return Worker(queue, engine, WorkerConfig("w1", default_size="nano", batch_size=4, block_ms=50, heartbeat_ttl_s=1.0,
                                              shutdown_grace_s=1.0, partial_interval_s=0.0))


async def test_a_request_queued_during_a_batch_joins_it_and_its_short_joke_is_answered_first(
    queue, reader, make_request, tiny_engine
):
    engine = JoinGate(tiny_engine)
    worker = worker_for(queue, engine)
    long = make_request("Вовочка", sampling=SamplingParams(max_new_tokens=60, seed=1))
    short = make_request("Кот", sampling=SamplingParams(max_new_tokens=3, seed=2))
    await queue.submit(long)
    running = asyncio.create_task(worker.run_once())
    assert await asyncio.to_thread(engine.asked.wait, 60), "the batch never asked for more jobs"
    await queue.submit(short)
    engine.queued.set()

    assert await running == 1  # one batch, claimed with one request: the other joined it
    results = await final_results(reader, 2)
    assert [r.request_id for r in results] == [short.request_id, long.request_id]
    assert worker.processed == 2
    solo = {job.request_id: tiny_engine.generate("nano", [job])[0].text
            for job in (_job(long), _job(short))}
    assert {r.request_id: r.text for r in results} == solo  # seeded: the same jokes as served alone


async def test_a_request_for_another_size_waits_for_the_next_batch_instead_of_joining(
    queue, reader, make_request, tiny_engine
):
    engine = JoinGate(tiny_engine)
    worker = worker_for(queue, engine)
    await queue.submit(make_request("Вовочка", sampling=SamplingParams(max_new_tokens=20, seed=1)))
    running = asyncio.create_task(worker.run_once())
    assert await asyncio.to_thread(engine.asked.wait, 60), "the batch never asked for more jobs"
    other = make_request("Кот", size="mini", sampling=SamplingParams(max_new_tokens=3, seed=2))
    await queue.submit(other)
    engine.queued.set()

    assert await running == 1
    [first] = await final_results(reader, 1)
    assert first.size == "nano"
    assert await worker.run_once() == 1  # the carried request is the next batch
    [second] = await final_results(reader, 1)
    assert (second.request_id, second.size, second.status) == (other.request_id, "mini", "ok")


async def test_nothing_joins_after_an_admin_switches_the_active_size(queue, reader, make_request, tiny_engine):
    engine = JoinGate(tiny_engine)
    worker = worker_for(queue, engine)
    await queue.submit(make_request("Вовочка", sampling=SamplingParams(max_new_tokens=20, seed=1)))
    running = asyncio.create_task(worker.run_once())
    assert await asyncio.to_thread(engine.asked.wait, 60), "the batch never asked for more jobs"
    await queue.set_active_size("mini", by_user=1)
    late = make_request("Кот", sampling=SamplingParams(max_new_tokens=3, seed=2))
    await queue.submit(late)
    engine.queued.set()

    assert await running == 1
    [first] = await final_results(reader, 1)
    assert first.size == "nano"
    assert await worker.run_once() == 1  # still queued: served by the next batch, with the new active size
    [second] = await final_results(reader, 1)
    assert (second.request_id, second.size) == (late.request_id, "mini")

