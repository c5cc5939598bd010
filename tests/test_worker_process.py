"""Crash safety with real worker processes and the real model: nothing accepted is lost."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis.asyncio
import torch

from bot.queue.client import RequestQueue
from bot.queue.config import QueueConfig
from bot.queue.protocol import Delivery, JokeRequest, JokeResult, SamplingParams
from bot.queue.results import ResultReader
from tests.model_helpers import make_tiny_model_dir
from tests.worker_process import start_worker, worker_env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-nano"))


def requests(n: int, max_new_tokens: int = 60) -> list[JokeRequest]:
    return [JokeRequest(prompt=f"Штирлиц пришел домой {i}", user_id=i, delivery=Delivery(chat_id=1000 + i, message_id=i),
                        sampling=SamplingParams(max_new_tokens=max_new_tokens, seed=i), deadline=time.time() + 120)
            for i in range(n)]


async def collect_results(reader: ResultReader, expected: set[str], timeout: float) -> dict[str, list]:
    """Every final result per request id, read from the results stream until all arrived."""
    seen: dict[str, list] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not expected <= {k for k, v in seen.items() if v}:
        for item in await reader.read(count=100, block_ms=200):
            if item.result.status != "partial":
                seen.setdefault(item.result.request_id, []).append(item.result)
            await reader.ack(item)
    return seen


async def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def test_kill_9_mid_batch_loses_nothing_and_answers_each_request_once(redis_server, key_prefix, tmp_path):
    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    config = QueueConfig(prefix=key_prefix, max_queue=100, max_deliveries=5, claim_idle_ms=1500)
    queue, reader = RequestQueue(client, config), ResultReader(client, config)
    await queue.ensure_groups()
    await reader.ensure_group()
    # A long context, so the batch runs for a second or more: a batch of the usual tiny model's few dozen
    # tokens could end between seeing its first partial and the kill.
    long_model = make_tiny_model_dir(tmp_path / "long-nano", max_seq_len=1024)
    env = worker_env(redis_server.url, key_prefix, long_model, WORKER_BATCH_SIZE="8", PARTIAL_INTERVAL_S="0.05")
    batch = requests(8, max_new_tokens=1000)
    for request in batch:
        request.stream_partials = True  # partials show the batch is mid-generation
        await queue.submit(request)
    doomed = start_worker({**env, "WORKER_ID": "doomed"}, tmp_path / "doomed.log")
    try:
        async def mid_batch() -> bool:
            # Some rows sample their end within a tenth of a second and are acked: the batch is mid-way while
            # any of it is still claimed, not only while all of it is.
            pending = await client.xpending(config.prefix + "requests:normal", "workers")
            partials = [e for e in await client.xrange(config.prefix + "results") if '"partial"' in e[1]["data"]]
            return pending["pending"] > 0 and bool(partials)
        assert await wait_until(mid_batch, timeout=60), (tmp_path / "doomed.log").read_text()[-3000:]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        # A row may sample its end of text and finish between the check and the kill: its answer is final
        # (published and acked in one script), so the rescuer must not answer it again.
        finished_before_kill = {JokeResult.model_validate_json(e[1]["data"]).request_id
                                for e in await client.xrange(config.prefix + "results") if '"ok"' in e[1]["data"]}
        assert len(finished_before_kill) < len(batch)
        rescuer = start_worker({**env, "WORKER_ID": "rescuer"}, tmp_path / "rescuer.log")
        try:
            results = await collect_results(reader, {r.request_id for r in batch}, timeout=90)
        finally:
            rescuer.send_signal(signal.SIGTERM)
            rescuer.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        await client.aclose()
    assert set(results) == {r.request_id for r in batch}, (tmp_path / "rescuer.log").read_text()[-3000:]
    assert all(len(v) == 1 for v in results.values()), "a request was answered twice"
    assert {v[0].status for v in results.values()} == {"ok"}
    assert {k: v[0].worker_id for k, v in results.items()} == {
        r.request_id: "doomed" if r.request_id in finished_before_kill else "rescuer" for r in batch}
    assert all(v[0].text.startswith("Штирлиц пришел домой") for v in results.values())


async def test_requests_accepted_before_a_redis_crash_are_answered_after_restart(redis_server_factory, key_prefix,
                                                                              model_dir, tmp_path):
    server = redis_server_factory(appendonly=True)
    config = QueueConfig(prefix=key_prefix, max_queue=100, max_deliveries=5, claim_idle_ms=1500)
    client = redis.asyncio.from_url(server.url, decode_responses=True)
    await RequestQueue(client, config).ensure_groups()
    await ResultReader(client, config).ensure_group()
    batch = requests(4, max_new_tokens=10)
    for request in batch:
        await RequestQueue(client, config).submit(request)
    await client.aclose()
    server.restart(kill=True)  # SIGKILL: only the append-only file keeps the accepted requests
    worker = start_worker(worker_env(server.url, key_prefix, model_dir), tmp_path / "worker.log")
    client = redis.asyncio.from_url(server.url, decode_responses=True)
    try:
        results = await collect_results(ResultReader(client, config), {r.request_id for r in batch}, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        await client.aclose()
    assert {k: [r.status for r in v] for k, v in results.items()} == {r.request_id: ["ok"] for r in batch}


async def test_sigterm_exits_cleanly_and_removes_the_heartbeat(redis_server, key_prefix, model_dir, tmp_path):
    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    queue = RequestQueue(client, QueueConfig(prefix=key_prefix))
    worker = start_worker(worker_env(redis_server.url, key_prefix, model_dir, WORKER_ID="w1"), tmp_path / "w.log")
    try:
        async def alive() -> bool:
            return [w.worker_id for w in await queue.live_workers()] == ["w1"]
        assert await wait_until(alive, timeout=60), (tmp_path / "w.log").read_text()[-2000:]
        info = (await queue.live_workers())[0]
        assert info.loaded_sizes == ["nano"] and info.device == "cpu"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert await queue.live_workers() == []
    finally:
        if worker.poll() is None:
            worker.kill()
        await client.aclose()


@pytest.mark.parametrize("setting, said", [
    ({"MODEL_NANO": "/nonexistent/model"}, "no model could be loaded"),
    *([({"DEVICE": "cuda"}, "DEVICE=cuda, but")] if not torch.cuda.is_available() else []),
])
def test_a_worker_that_has_nothing_to_serve_with_says_why_in_one_line_and_exits_2(setting, said, model_dir, tmp_path):
    """Exit code 2 is a configuration error, which `rujokes run` stops on instead of restarting the worker;
    before, both ended in a traceback and exit code 1. Neither needs Redis: the models load first."""
    log = tmp_path / "w.log"
    worker = start_worker(worker_env("redis://127.0.0.1:1/0", "unused", model_dir, LOG_FORMAT="text", **setting), log)
    assert worker.wait(timeout=120) == 2, log.read_text()[-2000:]
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and said in errors[0] and "Traceback" not in log.read_text(), log.read_text()[-2000:]
