"""The worker loop (bot/worker.py) end to end through a real redis-server, with a fake engine."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
import types

import pytest

from bot.common.logs import JsonFormatter
from bot.common.settings import Settings
from bot.common.tasks import cancel_and_wait
from bot.queue.client import RequestQueue
from bot.queue.config import QueueConfig
from bot.queue.connection import connect
from bot.queue.protocol import DATA_FIELD, DeadLetter, Delivery, SamplingParams
from bot.queue.results import ResultReader
from bot.queue.submit import QueueFull
from bot.worker.config import WorkerConfig
from bot.worker.engine_api import GenerationOutput, Job
from bot.worker.loop import Worker
from bot.worker.main import serve
from tests.results_helpers import final_results


class UpperEngine:
    """Answers "<size>:<PROMPT>"; records calls; can fail, stream partials, finish its first job
    early (on_done before the rest of the batch), or wait on a gate."""

    def __init__(self, sizes=("nano", "mini"), *, fail: bool = False, partial: bool = False,
                 gate: threading.Event | None = None, first_done_early: bool = False) -> None:
        self.sizes = list(sizes)
        self.fail = fail
        self.partial = partial
        self.gate = gate
        self.first_done_early = first_done_early
        self.started = threading.Event()
        self.calls: list[tuple[str, list[str]]] = []

    def available_sizes(self) -> list[str]:
        return self.sizes

    def generate(self, size: str, jobs: list[Job], on_partial=None, on_done=None, more_jobs=None) -> list[GenerationOutput]:
        self.calls.append((size, [job.prompt for job in jobs]))
        self.started.set()
        if self.fail:
            raise RuntimeError("CUDA out of memory (fake)")
        texts = {job.request_id: f"{size}:{job.prompt.upper()}" for job in jobs}
        if self.partial and on_partial:
            for request_id, text in texts.items():
                on_partial(request_id, text[:6])
        outputs = [GenerationOutput(rid, text, new_tokens=len(text), forward_passes=len(text) + 1)
                   for rid, text in texts.items()]
        if self.first_done_early and on_done:
            on_done(outputs[0])
        if self.gate is not None:
            self.gate.wait(timeout=10)
        return outputs


@pytest.fixture
def make_worker(redis_client, queue_config):
    def make(engine, worker_id: str = "w1", queue: QueueConfig | None = None, **config) -> Worker:
        config = {"batch_size": 4, "block_ms": 50, "heartbeat_ttl_s": 1.0, "shutdown_grace_s": 1.0,
                  "partial_interval_s": 0.0, "default_size": "nano", **config}
        return Worker(RequestQueue(redis_client, queue or queue_config), engine, WorkerConfig(worker_id, **config))

    return make


async def test_worker_answers_with_the_engine_text_and_logs_one_line_per_request(
    queue, reader, make_worker, make_request, caplog
):
    requests = [make_request("штирлиц"), make_request("чапаев", delivery=Delivery(inline_message_id="im-1"))]
    for request in requests:
        await queue.submit(request)
    worker = make_worker(UpperEngine())

    with caplog.at_level(logging.INFO, logger="bot.worker"):
        assert await worker.run_once() == 2

    results = {r.request_id: r for r in await final_results(reader, 2)}
    for request, text in zip(requests, ["nano:ШТИРЛИЦ", "nano:ЧАПАЕВ"]):
        result = results[request.request_id]
        assert (result.status, result.text, result.size, result.tokens) == ("ok", text, "nano", len(text))
        assert result.delivery == request.delivery
    logged = [r.fields for r in caplog.records if hasattr(r, "fields")]
    assert sorted(f["request_id"] for f in logged) == sorted(r.request_id for r in requests)
    assert {"status", "size", "latency_s", "tokens"} <= set(logged[0])


async def test_worker_batches_up_to_batch_size_with_inline_requests_first(queue, make_worker, make_request):
    for prompt, kind in [("а", "command"), ("б", "command"), ("в", "inline")]:
        await queue.submit(make_request(prompt, kind=kind))
    engine = UpperEngine()
    worker = make_worker(engine, batch_size=2)

    await worker.run_once()
    await worker.run_once()
    assert engine.calls == [("nano", ["в", "а"]), ("nano", ["б"])]


async def test_active_size_switch_reaches_every_worker_at_its_next_batch(queue, reader, make_worker, make_request):
    workers = [make_worker(UpperEngine(), worker_id, batch_size=1) for worker_id in ("w1", "w2")]

    async def one_batch_each() -> list[str]:
        for _ in workers:
            await queue.submit(make_request("x"))
        for worker in workers:
            await worker.run_once()
        return sorted((r.worker_id, r.text) for r in await final_results(reader, len(workers)))

    assert await one_batch_each() == [("w1", "nano:X"), ("w2", "nano:X")]
    await queue.set_active_size("mini", by_user=1001)
    assert await one_batch_each() == [("w1", "mini:X"), ("w2", "mini:X")]


async def test_unknown_or_unloaded_size_is_refused_and_the_worker_goes_on(queue, reader, make_worker, make_request):
    engine = UpperEngine(sizes=["nano"])
    worker = make_worker(engine)
    for size in ("huge", "small"):
        await queue.submit(make_request(size=size))
    await worker.run_once()
    assert [r.status for r in await final_results(reader, 2)] == ["unknown_size", "unknown_size"]
    assert engine.calls == []

    await queue.submit(make_request("дальше", size="nano"))
    await worker.run_once()
    assert [r.text for r in await final_results(reader, 1)] == ["nano:ДАЛЬШЕ"]


class JobRecordingEngine(UpperEngine):
    """UpperEngine that also keeps every Job it was given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.jobs: dict[str, Job] = {}

    def generate(self, size: str, jobs: list[Job], *args, **kwargs) -> list[GenerationOutput]:
        self.jobs.update({job.request_id: job for job in jobs})
        return super().generate(size, jobs, *args, **kwargs)


async def test_each_request_is_generated_with_its_own_sampling_and_size(queue, reader, make_worker, make_request):
    """A chat's /settings travel in its requests: one batch may mix lengths and creativity, and a request that
    names a size is served by that size whatever the active one."""
    engine = JobRecordingEngine()
    short = make_request("коротко", sampling=SamplingParams(max_new_tokens=6, temperature=0.7, top_k=5))
    wild = make_request("буйно", sampling=SamplingParams(max_new_tokens=240, temperature=1.3, top_k=50, seed=7))
    on_mini = make_request("мини", size="mini")
    for request in (short, wild, on_mini):
        await queue.submit(request)
    await make_worker(engine).run_once()  # one batch per size: nano (the active one), then mini
    jobs = engine.jobs
    assert (jobs[short.request_id].max_new_tokens, jobs[short.request_id].temperature,
            jobs[short.request_id].top_k) == (6, 0.7, 5)
    assert (jobs[wild.request_id].max_new_tokens, jobs[wild.request_id].temperature, jobs[wild.request_id].top_k,
            jobs[wild.request_id].seed) == (240, 1.3, 50, 7)
    texts = {r.request_id: r.text for r in await final_results(reader, 3)}
    assert texts == {short.request_id: "nano:КОРОТКО", wild.request_id: "nano:БУЙНО", on_mini.request_id: "mini:МИНИ"}


async def test_failing_generation_is_retried_then_dead_lettered_as_failed(
    redis_client, queue, reader, make_worker, make_request, queue_config
):
    engine = UpperEngine(fail=True)
    # A long claim_idle_ms: the retries come from releasing the batch, not from waiting for it to age.
    worker = make_worker(engine, queue=dataclasses.replace(queue_config, max_deliveries=2, claim_idle_ms=60_000))
    await queue.submit(make_request())

    for _ in range(3):
        await worker.run_once()
    assert len(engine.calls) == 2
    [result] = await final_results(reader, 1)
    assert (result.status, result.error) == ("failed", "max_deliveries")
    [(_, fields)] = await redis_client.xrange(queue.keys.dead_letter)
    assert DeadLetter.model_validate_json(fields[DATA_FIELD]).deliveries == 3


class PoisonedEngine(UpperEngine):
    """Raises for every batch that holds a prompt with "ЯД" in it, as a request that crashes the model would."""

    def generate(self, size, jobs, on_partial=None, on_done=None, more_jobs=None):
        if any("ЯД" in job.prompt for job in jobs):
            self.calls.append((size, [job.prompt for job in jobs]))
            raise RuntimeError("index out of range (fake poison)")
        return super().generate(size, jobs, on_partial, on_done, more_jobs)


async def test_a_poison_request_is_dead_lettered_alone_and_its_batch_mates_are_answered(
    redis_client, queue, reader, make_worker, make_request, queue_config
):
    engine = PoisonedEngine()
    worker = make_worker(engine, queue=dataclasses.replace(queue_config, max_deliveries=2, claim_idle_ms=60_000))
    innocent = [make_request("штирлиц"), make_request("чапаев")]
    poison = make_request("ЯД")
    for request in (innocent[0], poison, innocent[1]):
        await queue.submit(request)
    for _ in range(4):
        await worker.run_once()
    results = {result.request_id: result for result in await final_results(reader, 3)}
    assert [results[r.request_id].text for r in innocent] == ["nano:ШТИРЛИЦ", "nano:ЧАПАЕВ"]
    assert (results[poison.request_id].status, results[poison.request_id].error) == ("failed", "max_deliveries")
    [(_, fields)] = await redis_client.xrange(queue.keys.dead_letter)
    assert DeadLetter.model_validate_json(fields[DATA_FIELD]).payload.find(poison.request_id) >= 0
    await queue.submit(later := make_request("после яда"))  # the worker goes on serving
    await worker.run_once()
    assert [r.text for r in await final_results(reader, 1) if r.request_id == later.request_id] == ["nano:ПОСЛЕ ЯДА"]


async def test_partial_results_reach_the_reader_while_generation_runs(queue, reader, make_worker, make_request):
    gate = threading.Event()
    worker = make_worker(UpperEngine(partial=True, gate=gate))
    await queue.submit(make_request("анекдот", stream_partials=True))
    running = asyncio.create_task(worker.run_once())

    async with asyncio.timeout(3):
        seen = []
        while not seen:
            seen = await reader.read(block_ms=50)
    assert [(i.result.status, i.result.text) for i in seen] == [("partial", "nano:А")]
    gate.set()
    await running
    assert [r.text for r in await final_results(reader, 1)] == ["nano:АНЕКДОТ"]


async def test_slow_generation_is_kept_fresh_and_not_reclaimed(queue, make_worker, make_request, queue_config):
    # 2 s of claim idle time against a touch every 0.1 s (heartbeat_ttl_s / 3): a loaded machine would have
    # to stall the worker's event loop for 1.9 s to let the request be reclaimed.
    quick_reclaim = dataclasses.replace(queue_config, claim_idle_ms=2000)
    gate = threading.Event()
    engine = UpperEngine(gate=gate)
    slow = make_worker(engine, "slow", queue=quick_reclaim, heartbeat_ttl_s=0.3)
    await queue.submit(make_request())
    running = asyncio.create_task(slow.run())
    other = make_worker(UpperEngine(), "other", queue=quick_reclaim, block_ms=10)
    await asyncio.to_thread(engine.started.wait, 20)  # the slow worker has it (and is generating)
    claimed_at = asyncio.get_running_loop().time()

    while asyncio.get_running_loop().time() - claimed_at < 2.5:  # well past claim_idle_ms
        await asyncio.sleep(0.1)
        assert await other.run_once() == 0
    gate.set()
    slow.request_stop()
    await asyncio.wait_for(running, 2)
    assert slow.processed == 1


async def test_stop_lets_the_running_batch_finish_within_the_grace_period(queue, reader, make_worker, make_request):
    gate = threading.Event()
    engine = UpperEngine(gate=gate)
    worker = make_worker(engine, shutdown_grace_s=2.0)
    await queue.submit(make_request("успел"))
    running = asyncio.create_task(worker.run())
    await asyncio.to_thread(engine.started.wait, 2)

    worker.request_stop()
    await asyncio.sleep(0.1)
    gate.set()
    await asyncio.wait_for(running, 2)
    assert not worker.abandoned
    assert [r.text for r in await final_results(reader, 1)] == ["nano:УСПЕЛ"]


async def test_stop_hands_an_unfinished_batch_back_for_immediate_reclaim(
    queue, reader, make_worker, make_request, queue_config
):
    patient = dataclasses.replace(queue_config, claim_idle_ms=60_000)  # reclaim must not need to wait
    gate = threading.Event()
    engine = UpperEngine(gate=gate)
    worker = make_worker(engine, queue=patient, shutdown_grace_s=0.1)
    await queue.submit(make_request("передай"))
    running = asyncio.create_task(worker.run())
    await asyncio.to_thread(engine.started.wait, 2)
    try:
        worker.request_stop()
        await asyncio.wait_for(running, 2)
        assert worker.abandoned
        successor = make_worker(UpperEngine(), "w2", queue=patient)
        assert await successor.run_once() == 1
        [result] = await final_results(reader, 1)
        assert (result.worker_id, result.text) == ("w2", "nano:ПЕРЕДАЙ")
    finally:
        gate.set()  # let the abandoned engine thread end


async def test_sigterm_stops_an_idle_worker_and_removes_its_heartbeat(queue, make_worker):
    worker = make_worker(UpperEngine(), "sleepy", block_ms=100)
    worker.install_signal_handlers()
    loop = asyncio.get_running_loop()
    try:
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(2):
            while not await queue.live_workers():
                await asyncio.sleep(0.02)
        [info] = await queue.live_workers()
        assert (info.worker_id, info.loaded_sizes, info.batch_size) == ("sleepy", ["mini", "nano"], 4)

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, 1)
        assert await queue.live_workers() == []
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def queue_on_own_redis(redis_server_factory, queue_config):
    """(server, client, queue) on a Redis of the test's own (AOF on), which it may kill, restart or refuse writes."""
    server = redis_server_factory(appendonly=True)
    client = connect(server.url)
    try:
        queue = RequestQueue(client, queue_config)
        await queue.ensure_groups()
        yield server, client, queue
    finally:
        await client.aclose()


async def test_requests_survive_a_redis_restart_with_aof_and_are_answered(
    redis_server_factory, queue_config, make_request
):
    async with queue_on_own_redis(redis_server_factory, queue_config) as (server, client, queue):
        requests = [make_request(f"номер {i}") for i in range(3)]
        for request in requests:
            await queue.submit(request)

        server.restart(kill=True)  # SIGKILL: only the AOF remembers

        # The same client, whose pooled connection died with the server, reconnects by itself.
        worker = Worker(queue, UpperEngine(), WorkerConfig("w1", block_ms=50, default_size="nano"))
        running = asyncio.create_task(worker.run())
        results = await final_results(ResultReader(client, queue_config), 3)
        assert sorted(r.request_id for r in results) == sorted(r.request_id for r in requests)
        worker.request_stop()
        await asyncio.wait_for(running, 2)


async def test_a_worker_waits_out_a_redis_that_refuses_writes_then_answers(
    redis_server_factory, queue_config, make_request
):
    """As when the AOF's disk is full (MISCONF): here NOREPLICAS, the same refusal of every write."""
    async with queue_on_own_redis(redis_server_factory, queue_config) as (_, client, queue):
        worker = Worker(queue, UpperEngine(), WorkerConfig("w1", block_ms=50, default_size="nano"))
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)
        await client.config_set("min-replicas-to-write", 1)
        await asyncio.sleep(2.5)  # several rounds of refused claims and heartbeats
        assert not running.done(), running.exception() if running.done() else None
        await client.config_set("min-replicas-to-write", 0)
        request = make_request("после отказа")
        await queue.submit(request)
        [result] = await final_results(ResultReader(client, queue_config), 1, timeout_s=5)
        assert (result.request_id, result.text) == (request.request_id, "nano:ПОСЛЕ ОТКАЗА")
        worker.request_stop()
        await asyncio.wait_for(running, 2)


async def test_worker_main_serves_with_the_engine_from_build_engine_until_sigterm(
    redis_server, redis_client, key_prefix, make_request, monkeypatch
):
    fake_engine_module = types.ModuleType("bot.worker.loading")
    fake_engine_module.build_engine = lambda settings: UpperEngine(sizes=[settings.default_size])
    monkeypatch.setitem(sys.modules, "bot.worker.loading", fake_engine_module)
    settings = Settings(_env_file=None, redis_url=redis_server.url, redis_prefix=key_prefix,
                        worker_id="main-1", worker_block_ms=50, default_size="mini")
    queue = RequestQueue(redis_client, settings.queue_config())
    loop = asyncio.get_running_loop()
    try:
        serving = asyncio.create_task(serve(settings))
        async with asyncio.timeout(5):
            while not await queue.live_workers():  # signal handlers are installed by now
                await asyncio.sleep(0.02)
        await queue.submit(make_request("из main"))
        reader = ResultReader(redis_client, settings.queue_config())
        [result] = await final_results(reader, 1)
        assert (result.worker_id, result.text) == ("main-1", "mini:ИЗ MAIN")

        os.kill(os.getpid(), signal.SIGTERM)
        worker = await asyncio.wait_for(serving, 2)
        assert worker.processed == 1 and not worker.abandoned
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def test_json_log_lines_carry_the_request_fields():
    record = logging.LogRecord("bot.worker", logging.INFO, __file__, 1, "request request_id=abc", None, None)
    record.fields = {"request_id": "abc", "status": "ok", "latency_s": 0.5}
    line = json.loads(JsonFormatter().format(record))
    assert (line["request_id"], line["status"], line["level"]) == ("abc", "ok", "INFO")


async def test_a_row_that_finishes_early_is_answered_before_its_batch_ends(queue, reader, make_worker, make_request):
    gate = threading.Event()
    worker = make_worker(UpperEngine(gate=gate, first_done_early=True))
    for prompt in ("раз", "два", "три"):
        await queue.submit(make_request(prompt))
    running = asyncio.create_task(worker.run_once())
    try:
        [early] = await final_results(reader, 1)  # the engine is still blocked on the gate
        assert early.text == "nano:РАЗ" and not running.done()
    finally:
        gate.set()
    assert await running == 3
    rest = await final_results(reader, 2)
    assert sorted(r.text for r in rest) == ["nano:ДВА", "nano:ТРИ"]
    assert await reader.read(block_ms=100) == []  # each request answered exactly once
    assert worker.processed == 3


async def test_an_early_answer_follows_its_own_partials(queue, reader, make_worker, make_request):
    gate = threading.Event()
    worker = make_worker(UpperEngine(partial=True, gate=gate, first_done_early=True))
    await queue.submit(make_request("анекдот", stream_partials=True))
    running = asyncio.create_task(worker.run_once())
    try:
        statuses = []
        async with asyncio.timeout(3):
            while "ok" not in statuses:
                statuses += [item.result.status for item in await reader.read(block_ms=50)]
        assert statuses == ["partial", "ok"]
    finally:
        gate.set()
    await running
    assert [item.result.status for item in await reader.read(block_ms=100)] == []  # nothing after the final


async def test_shutdown_hands_back_only_the_requests_not_answered_early(
    queue, reader, make_worker, make_request, queue_config
):
    patient = dataclasses.replace(queue_config, claim_idle_ms=60_000)
    gate = threading.Event()
    engine = UpperEngine(gate=gate, first_done_early=True)
    worker = make_worker(engine, queue=patient, shutdown_grace_s=0.1)
    for prompt in ("первый", "второй"):
        await queue.submit(make_request(prompt))
    running = asyncio.create_task(worker.run())
    try:
        [early] = await final_results(reader, 1)
        worker.request_stop()
        await asyncio.wait_for(running, 2)
        assert worker.abandoned
        successor = make_worker(UpperEngine(), "w2", queue=patient)
        assert await successor.run_once() == 1  # only the unanswered one comes back
        [result] = await final_results(reader, 1)
        assert (early.text, result.worker_id, result.text) == ("nano:ПЕРВЫЙ", "w2", "nano:ВТОРОЙ")
    finally:
        gate.set()


def test_a_default_size_the_worker_did_not_load_becomes_its_largest_loaded_size(caplog):
    settings = Settings(_env_file=None, default_size="mini")
    assert WorkerConfig.from_settings(settings, "cpu", ["nano", "mini"]).default_size == "mini"
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="bot.worker.config"):
        assert WorkerConfig.from_settings(settings, "cpu", ["small", "nano"]).default_size == "small"
    assert "DEFAULT_SIZE=mini is not loaded by this worker" in caplog.text
    assert WorkerConfig.from_settings(settings, "cpu").default_size == "mini"  # nothing known: as configured


class NeverEndingBatch:
    """A busy engine's batch: it asks for one row at a time between steps and runs until the prompt
    `until` is in it (or `patience_s` is up), as a batch under steady load never drains."""

    def __init__(self, until: str, patience_s: float) -> None:
        self.until, self.patience_s = until, patience_s
        self.seen: list[str] = []  # the prompts of the batch, in the order they came: first jobs, then joins
        self.asks = 0

    def available_sizes(self) -> list[str]:
        return ["nano"]

    def generate(self, size, jobs, on_partial=None, on_done=None, more_jobs=None) -> list[GenerationOutput]:
        jobs = list(jobs)
        self.seen += [job.prompt for job in jobs]
        give_up = time.monotonic() + self.patience_s
        while self.until not in self.seen and time.monotonic() < give_up:
            time.sleep(0.01)
            self.asks += 1
            joining = more_jobs(3)  # a batch of 4 with one row free: the waiting requests compete for it
            self.seen += [job.prompt for job in joining]
            jobs += joining
        return [GenerationOutput(job.request_id, job.prompt, new_tokens=1, forward_passes=1) for job in jobs]


async def test_a_dead_worker_s_request_joins_a_running_batch_that_new_requests_keep_full(
        redis_client, queue_config, make_worker, make_request):
    """The fault drill's mini worker-kill row: the survivor's batch never ends under steady load. A dead
    worker's request must join it within a few reclaim rounds, ahead of the new requests that keep coming."""
    config = dataclasses.replace(queue_config, claim_idle_ms=200)
    queue = RequestQueue(redis_client, config)
    await queue.ensure_groups()
    await queue.submit(make_request("held by the dead"))
    assert len((await queue.claim_batch("w-dead", max_items=1)).ready) == 1  # and it never answers
    await queue.submit(make_request("first"))
    engine = NeverEndingBatch(until="held by the dead", patience_s=30)
    worker = make_worker(engine, "w1", queue=config, batch_size=4)

    async def steady_load() -> None:  # keeps the queue at max_queue: a full queue refuses, the load goes on
        for n in itertools.count():
            with contextlib.suppress(QueueFull):
                await queue.submit(make_request(f"new {n}"))
            await asyncio.sleep(0.005)

    load = asyncio.create_task(steady_load())
    try:
        await asyncio.wait_for(worker.run_once(), 60)
    finally:
        assert not await cancel_and_wait(load, timeout_s=10)  # a plain cancel can be lost in a Redis write
    assert "held by the dead" in engine.seen, (engine.asks, engine.seen[-5:])
    assert engine.seen.index("held by the dead") > 0  # it joined the running batch, behind new ones


async def test_a_joke_gets_its_share_of_a_running_batch_that_inline_queries_keep_full(
        redis_client, queue_config, make_worker, make_request):
    """The same drill row's other half: with one worker left and inline queries (read first) always
    waiting, a /joke waited for the load to end. It must get its share of the free rows."""
    from bot.queue.claims import NORMAL_EVERY

    config = dataclasses.replace(queue_config, max_queue=500)
    queue = RequestQueue(redis_client, config)
    await queue.ensure_groups()
    for n in range(300):  # more than the batch takes in the test's patience: the high stream never empties
        await queue.submit(make_request(f"inline {n}", kind="inline", delivery=Delivery(inline_query_id=f"q{n}")))
    await queue.submit(make_request("a joke"))
    engine = NeverEndingBatch(until="a joke", patience_s=30)
    worker = make_worker(engine, "w1", queue=config, batch_size=4)
    await asyncio.wait_for(worker.run_once(), 60)
    assert "a joke" in engine.seen[:NORMAL_EVERY], engine.seen[:2 * NORMAL_EVERY]
