"""Metrics (bot/common/metrics.py) and the worker's instrumentation, scraped over real HTTP."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bot.common.metrics import Metrics, start_http_server
from bot.queue.client import RequestQueue
from bot.queue.protocol import SamplingParams
from bot.worker.config import WorkerConfig
from bot.worker.engine_api import GenerationOutput, Job
from bot.worker.loop import Worker


class EchoEngine:
    """Answers "<size>:<prompt>", one token per character, cut at the job's token limit as the real engine
    cuts (and says so); can hold generation until a gate opens."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate

    def available_sizes(self) -> list[str]:
        return ["nano"]

    def generate(self, size: str, jobs: list[Job], on_partial=None, on_done=None, more_jobs=None) -> list[GenerationOutput]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        return [GenerationOutput(job.request_id, f"{size}:{job.prompt[:job.max_new_tokens]}",
                                 new_tokens=min(len(job.prompt), job.max_new_tokens),
                                 forward_passes=min(len(job.prompt), job.max_new_tokens),
                                 cut=len(job.prompt) > job.max_new_tokens) for job in jobs]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (sample name, frozenset of label items)."""
    status, content_type, body = get(url)
    assert status == 200 and content_type.startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def serve_metrics(metrics):
    servers = []

    def start(health=lambda: {"healthy": True}) -> str:
        server = start_http_server(metrics.registry, "127.0.0.1", 0, health)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_worker(redis_client, queue_config, metrics):
    def make(engine, **config) -> Worker:
        config = {"batch_size": 4, "block_ms": 50, "heartbeat_ttl_s": 1.0, "shutdown_grace_s": 1.0,
                  "default_size": "nano", **config}
        return Worker(RequestQueue(redis_client, queue_config), engine, WorkerConfig("w1", **config), metrics)

    return make


async def test_a_served_request_moves_the_request_latency_and_token_metrics(queue, make_worker, make_request,
                                                                          serve_metrics):
    url = serve_metrics()
    await queue.submit(make_request("штирлиц", kind="command"))

    assert await make_worker(EchoEngine()).run_once() == 1

    samples = await asyncio.to_thread(scrape, f"{url}/metrics")
    assert samples[("rujokes_requests_total", frozenset({"kind": "command", "size": "nano", "outcome": "ok"}.items()))] == 1
    assert samples[("rujokes_generation_seconds_count", frozenset({"size": "nano"}.items()))] == 1
    assert samples[("rujokes_request_latency_seconds_count", frozenset({"size": "nano"}.items()))] == 1
    assert samples[("rujokes_batch_size_sum", frozenset({"size": "nano"}.items()))] == 1
    assert samples[("rujokes_generated_tokens_total", frozenset({"size": "nano"}.items()))] == len("штирлиц")
    assert samples[("rujokes_tokens_per_second", frozenset({"size": "nano"}.items()))] > 0
    assert samples[("rujokes_cut_jokes_total", frozenset({"size": "nano"}.items()))] == 0


async def test_jokes_that_ran_into_their_token_limit_are_counted(queue, make_worker, make_request, metrics):
    for prompt in ["штирлиц", "вовочка пришел в школу", "кот"]:
        await queue.submit(make_request(prompt, sampling=SamplingParams(max_new_tokens=5)))

    assert await make_worker(EchoEngine()).run_once() == 3

    assert metrics.registry.get_sample_value("rujokes_cut_jokes_total", {"size": "nano"}) == 2
    assert metrics.registry.get_sample_value("rujokes_generated_tokens_total", {"size": "nano"}) == 5 + 5 + 3


async def test_a_request_expired_in_the_queue_is_counted_with_unknown_kind(queue, make_worker, make_request, metrics):
    await queue.submit(make_request(deadline=time.time() - 1))

    assert await make_worker(EchoEngine()).run_once() == 1

    labels = {"kind": "unknown", "size": "unknown", "outcome": "expired"}
    assert metrics.registry.get_sample_value("rujokes_requests_total", labels) == 1


async def test_an_unknown_size_is_counted_under_other_so_input_cannot_grow_the_series(queue, make_worker, make_request,
                                                                                    metrics):
    await queue.submit(make_request(size="huge-" + "x" * 20))

    await make_worker(EchoEngine()).run_once()

    labels = {"kind": "command", "size": "other", "outcome": "unknown_size"}
    assert metrics.registry.get_sample_value("rujokes_requests_total", labels) == 1


async def test_the_heartbeat_sets_the_queue_length_gauge(queue, make_worker, make_request, metrics):
    gate = threading.Event()  # keep both requests in flight: they count as outstanding until answered
    worker = make_worker(EchoEngine(gate))
    for prompt in ("а", "б"):
        await queue.submit(make_request(prompt))
    running = asyncio.create_task(worker.run())
    try:
        seen, deadline = None, time.monotonic() + 3
        while seen != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            seen = metrics.registry.get_sample_value("rujokes_queue_length")
        assert seen == 2
    finally:
        gate.set()
        worker.request_stop()
        await asyncio.wait_for(running, 3)


async def test_worker_health_is_healthy_while_the_loop_turns_and_stale_after(queue, make_worker):
    worker = make_worker(EchoEngine())
    assert worker.health(stale_after_s=60)["healthy"] is False  # not started yet
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(3):
            while not worker.health(stale_after_s=60)["healthy"]:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.01)
        assert worker.health(stale_after_s=0)["healthy"] is False
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, 3)
    report = worker.health(stale_after_s=60)
    assert (report["healthy"], report["stopping"], report["worker_id"]) == (False, True, "w1")


async def test_healthz_answers_200_with_the_health_report_as_json(serve_metrics):
    url = serve_metrics(lambda: {"healthy": True, "worker_id": "w1"})

    status, content_type, body = await asyncio.to_thread(get, f"{url}/healthz")

    assert (status, content_type.split(";")[0]) == (200, "application/json")
    assert json.loads(body) == {"healthy": True, "worker_id": "w1"}


async def test_healthz_answers_503_when_the_health_check_reports_unhealthy(serve_metrics):
    url = serve_metrics(lambda: {"healthy": False, "redis_ok_age_s": 99.0})

    status, _, body = await asyncio.to_thread(get, f"{url}/healthz")

    assert status == 503
    assert json.loads(body) == {"healthy": False, "redis_ok_age_s": 99.0}


async def test_healthz_answers_503_when_the_health_check_raises(serve_metrics):
    def broken() -> dict:
        raise RuntimeError("boom")

    status, _, body = await asyncio.to_thread(get, f"{serve_metrics(broken)}/healthz")

    assert status == 503 and json.loads(body)["healthy"] is False


def test_bot_side_helpers_count_votes_and_telegram_errors(metrics):
    metrics.vote("mini", "up")
    metrics.vote("mini", "up")
    metrics.vote(None, "down")
    metrics.telegram_error("editMessageText", 400)
    metrics.telegram_retry_after("sendMessage")

    value = metrics.registry.get_sample_value
    assert value("rujokes_votes_total", {"size": "mini", "vote": "up"}) == 2
    assert value("rujokes_votes_total", {"size": "unknown", "vote": "down"}) == 1
    assert value("rujokes_telegram_errors_total", {"method": "editMessageText", "code": "400"}) == 1
    assert value("rujokes_telegram_retry_afters_total", {"method": "sendMessage"}) == 1


def test_metrics_live_only_in_the_registry_passed_in():
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())  # the global one would refuse
    first.request_finished("inline", "nano", "ok", 0.5)

    assert first.registry.get_sample_value("rujokes_requests_total",
                                           {"kind": "inline", "size": "nano", "outcome": "ok"}) == 1
    assert second.registry.get_sample_value("rujokes_requests_total",
                                            {"kind": "inline", "size": "nano", "outcome": "ok"}) is None
    assert prometheus_client.REGISTRY.get_sample_value("rujokes_requests_total",
                                                       {"kind": "inline", "size": "nano", "outcome": "ok"}) is None
