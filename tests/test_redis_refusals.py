"""Redis that is up but refuses writes (the AOF's disk full: MISCONF; too few replicas: NOREPLICAS) is an
outage to wait out (`is_outage`), in every form redis-py hands the refusal over: a command's error, a
transaction's or a pipeline's annotated one ("Command # 1 (…) of pipeline caused error: …"), a Lua script's.
The bot and the workers wait on that answer, so a form it misses turns an outage into a failed delivery (the
fault drill's doubled jokes came from exactly that). A bug's error is no outage.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from bot.queue.connection import is_outage


async def refused(write: Callable[[], Awaitable[object]]) -> ResponseError:
    try:
        await write()
    except ResponseError as error:
        return error
    raise AssertionError("the write was not refused")


async def every_form_of_a_write(client: redis.asyncio.Redis) -> dict[str, Callable[[], Awaitable[object]]]:
    async def transaction() -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem("due", "r1")
            pipe.delete("record")
            await pipe.execute()

    async def pipeline() -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("a", "1")
            pipe.set("b", "2")
            await pipe.execute()

    script = client.register_script("redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], ARGV[1])")
    return {"command": lambda: client.set("k", "v"), "transaction": transaction, "pipeline": pipeline,
            "script": lambda: script(keys=["k"], args=["v"])}


async def until_writes_are(client: redis.asyncio.Redis, refused_now: bool, timeout_s: float = 10) -> None:
    """A full disk is noticed at the AOF's next write: the write that hits it was accepted into the buffer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await client.set("probe", "1")
            if not refused_now:
                return
        except ResponseError as error:
            if refused_now and is_outage(error):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"writes still {'accepted' if refused_now else 'refused'} after {timeout_s} s")


@pytest.mark.parametrize("cause", ["disk full", "no replicas"])
async def test_every_form_of_a_refused_write_is_an_outage_that_ends_when_the_cause_does(redis_server_factory, cause):
    server = redis_server_factory(appendonly=True, fsync="everysec")  # deploy/redis.conf's policy: it survives
    client = redis.asyncio.from_url(server.url, decode_responses=True)
    try:
        await client.set("before", "kept")
        if cause == "disk full":
            server.disk_full(True)
        else:
            await client.config_set("min-replicas-to-write", 1)
        await until_writes_are(client, refused_now=True)
        for form, write in (await every_form_of_a_write(client)).items():
            error = await refused(write)
            assert is_outage(error), f"{form}: {error}"
            assert ("MISCONF" if cause == "disk full" else "NOREPLICAS") in str(error)
        assert await client.get("before") == "kept"  # reads are still served

        if cause == "disk full":
            server.disk_full(False)
        else:
            await client.config_set("min-replicas-to-write", 0)
        await until_writes_are(client, refused_now=False)
        for write in (await every_form_of_a_write(client)).values():
            await write()
        await client.lpush("list", "x")
        bug = await refused(lambda: client.zadd("list", {"m": 1}))  # WRONGTYPE: a bug, not an outage
        assert not is_outage(bug), bug
    finally:
        await client.aclose()
