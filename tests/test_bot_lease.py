"""The Telegram lease (bot/telegram/lease.py) on a real Redis: one holder at a time, a standby that takes over
when the holder releases it or dies, a holder that notices another took it, and outages that change nothing."""
from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio

from bot.common.tasks import cancel_and_wait
from bot.telegram.lease import BotLease, lease_key
from tests.e2e_stack import free_port

TTL_S = 0.8


async def stop_after(seconds: float) -> asyncio.Event:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return stop


async def acquired(lease: BotLease, within_s: float) -> bool:
    return await lease.acquire(await stop_after(within_s))


@contextlib.asynccontextmanager
async def keeping(lease: BotLease):
    task = asyncio.create_task(lease.keep())
    try:
        yield task
    finally:
        assert not await cancel_and_wait(task, timeout_s=10)  # a plain cancel can be lost in a Redis write


async def test_one_holder_at_a_time_and_a_standby_takes_over_at_once_when_it_is_released(redis_client, key_prefix):
    first, standby = BotLease(redis_client, key_prefix, TTL_S), BotLease(redis_client, key_prefix, TTL_S)
    assert await acquired(first, 5)
    assert await redis_client.get(lease_key(key_prefix)) == first.holder
    async with keeping(first) as kept:
        assert not await acquired(standby, 3 * TTL_S)  # renewed all along: never free
        assert not kept.done()
    await first.release()
    started = time.monotonic()
    assert await acquired(standby, 5)
    assert time.monotonic() - started < standby.renew_s  # a release is not waited out like a lapse
    assert await redis_client.get(lease_key(key_prefix)) == standby.holder
    await first.release()  # no longer its lease: changes nothing
    assert await redis_client.get(lease_key(key_prefix)) == standby.holder


async def test_a_dead_holder_s_lease_lapses_and_the_standby_takes_it(redis_client, key_prefix):
    dead, standby = BotLease(redis_client, key_prefix, TTL_S), BotLease(redis_client, key_prefix, TTL_S)
    assert await acquired(dead, 5)
    async with keeping(dead):
        await asyncio.sleep(TTL_S)
    died = time.monotonic()  # stopped renewing without a release, as a process killed with SIGKILL
    assert await acquired(standby, 10)
    took = time.monotonic() - died
    assert TTL_S * 0.5 < took < TTL_S + 4 * standby.renew_s, took  # the lease's lapse, then the second sighting


async def test_a_holder_whose_lease_another_took_notices_within_a_renewal(redis_client, key_prefix):
    holder = BotLease(redis_client, key_prefix, TTL_S)
    assert await acquired(holder, 5)
    async with keeping(holder) as kept:
        await asyncio.sleep(holder.renew_s)
        await redis_client.set(lease_key(key_prefix), "elsewhere:1:abc", px=10_000)  # it stalled; a standby took it
        assert await asyncio.wait_for(kept, 3 * holder.renew_s) == "elsewhere:1:abc"


async def test_when_redis_loses_the_lease_the_incumbent_takes_it_back_before_a_standby(redis_client, key_prefix):
    incumbent, standby = BotLease(redis_client, key_prefix, TTL_S), BotLease(redis_client, key_prefix, TTL_S)
    assert await acquired(incumbent, 5)
    async with keeping(incumbent) as kept:
        waiting = asyncio.create_task(standby.acquire(await stop_after(6 * TTL_S)))
        for _ in range(5):  # a restart that lost the key, again and again
            await asyncio.sleep(TTL_S)
            await redis_client.delete(lease_key(key_prefix))
        assert not await waiting
        assert not kept.done()
        assert await redis_client.get(lease_key(key_prefix)) == incumbent.holder


async def test_redis_out_of_reach_is_waited_out_by_holder_and_standby():
    client = redis.asyncio.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True,
                                    socket_connect_timeout=0.2)
    try:
        lease = BotLease(client, "nowhere:", TTL_S)
        assert not await acquired(lease, 1.0)  # no exception: it waits for Redis
        assert lease.redis_ok_at is None
        async with keeping(lease) as kept:  # a holder cut off from Redis keeps serving
            await asyncio.sleep(4 * lease.renew_s)
            assert not kept.done()
    finally:
        await client.aclose()


async def test_after_redis_was_away_the_incumbent_keeps_its_lease_though_its_client_reconnects_late(
        redis_server_factory):
    """Redis away long enough for the clients to fail, and back without the lease (no AOF): the incumbent's client
    may still be in its retry backoff. A standby that took the free lease at once made two processes deliver
    together (the fault drill's redis-away row, three jokes doubled)."""
    from bot.queue.connection import connect

    server = redis_server_factory(appendonly=False)
    incumbent_client, standby_client = connect(server.url), connect(server.url)
    try:
        incumbent = BotLease(incumbent_client, "away:", 2.0)
        standby = BotLease(standby_client, "away:", 2.0)
        assert await acquired(incumbent, 5)
        waiting = asyncio.create_task(standby.acquire(await stop_after(15)))
        await asyncio.sleep(0.5)
        server.stop()
        await asyncio.sleep(6)  # past the clients' retries (5.1 s in all): the standby sees the outage
        server.start()  # empty: the lease is gone
        await asyncio.sleep(2)  # the incumbent's client still backing off
        async with keeping(incumbent) as kept:
            await asyncio.sleep(3 * incumbent.renew_s)  # its first renewal takes the lease back
            assert not waiting.done(), "the standby took the lease from a live incumbent"
            assert await standby_client.get(lease_key("away:")) == incumbent.holder
            assert not kept.done()
        waiting.cancel()
    finally:
        await incumbent_client.aclose()
        await standby_client.aclose()
