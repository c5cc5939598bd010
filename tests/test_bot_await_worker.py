"""`rujokes-bot --await-worker-s` (how `rujokes run` starts its bots beside the worker): it takes no update
until a worker beats, and waits no longer than told, or than a stop request."""
from __future__ import annotations

import asyncio
import logging
import time

from bot.queue.client import RequestQueue
from bot.queue.protocol import WorkerInfo
from bot.telegram.app import await_worker


def worker(worker_id: str = "w1") -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, host="h", pid=1, device="cpu", loaded_sizes=["nano"], batch_size=8)


async def test_it_returns_once_a_worker_beats(redis_client, queue_config, caplog):
    queue = RequestQueue(redis_client, queue_config)
    stop = asyncio.Event()
    waiting = asyncio.create_task(await_worker(queue, stop, timeout_s=60))
    await asyncio.sleep(0.6)
    assert not waiting.done(), "no worker yet"
    beat_at = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bot.telegram.app"):
        await queue.publish_heartbeat(worker(), ttl_s=30)
        await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - beat_at < 2
    assert "a worker beats" in caplog.text


async def test_it_stops_waiting_after_its_timeout_with_a_warning(redis_client, queue_config, caplog):
    queue = RequestQueue(redis_client, queue_config)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bot.telegram.app"):
        await asyncio.wait_for(await_worker(queue, asyncio.Event(), timeout_s=0.5), 10)
    assert time.monotonic() - started >= 0.5
    assert "no worker heartbeat within" in caplog.text


async def test_a_stop_request_ends_the_wait(redis_client, queue_config):
    queue = RequestQueue(redis_client, queue_config)
    stop = asyncio.Event()
    waiting = asyncio.create_task(await_worker(queue, stop, timeout_s=60))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(waiting, 5)
