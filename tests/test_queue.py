"""The Redis Streams protocol (bot/queue/) against a real redis-server."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from bot.queue.client import RequestQueue
from bot.queue.connection import connect, start_embedded_redis
from bot.queue.protocol import DATA_FIELD, WORKER_GROUP, DeadLetter, Delivery, JokeResult, WorkerInfo
from bot.queue.results import ResultReader
from bot.queue.submit import QueueFull
from tests.results_helpers import track


def answer_ok(claimed, worker_id: str, text: str = "анекдот") -> JokeResult:
    return JokeResult.answer(claimed.request, "ok", worker_id, text=text, size="nano")


async def test_request_round_trip_keeps_its_delivery_target(redis_client, queue_config, make_request):
    queue, reader = RequestQueue(redis_client, queue_config), ResultReader(redis_client, queue_config)
    await queue.ensure_groups()
    await reader.ensure_group()
    request = make_request("про Вовочку")

    await queue.submit(request)
    batch = await queue.claim_batch("w1", max_items=4)
    assert [c.request for c in batch.ready] == [request]
    assert await queue.publish_result(answer_ok(batch.ready[0], "w1"), batch.ready[0])

    [received] = await reader.read(block_ms=100)
    assert received.result.request_id == request.request_id
    assert received.result.delivery == Delivery(chat_id=42, message_id=7, reply_to_message_id=6)
    assert received.result.status == "ok" and received.result.worker_id == "w1"
    assert await queue.depth() == 0  # answered requests are acked and deleted


async def test_submit_refuses_once_outstanding_work_reaches_max_queue(redis_client, queue_config, make_request):
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, max_queue=2))
    await queue.ensure_groups()
    await queue.submit(make_request())
    await queue.submit(make_request(kind="inline"))

    with pytest.raises(QueueFull):
        await queue.submit(make_request())

    # Claimed but unanswered work still counts; answering it makes room.
    batch = await queue.claim_batch("w1", max_items=1)
    with pytest.raises(QueueFull):
        await queue.submit(make_request())
    await queue.publish_result(answer_ok(batch.ready[0], "w1"), batch.ready[0])
    await queue.submit(make_request())


async def test_a_request_and_its_bot_side_record_reach_redis_together_or_not_at_all(redis_client, queue_config,
                                                                                    make_request):
    """The bot remembers a request (its record, its update settled) in the transaction that queues it: a bot killed
    after remembering but before queueing left a settled update whose joke nobody would write."""
    from bot.telegram.outstanding import OutstandingRequests

    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    outstanding = OutstandingRequests(redis_client, queue_config.prefix)
    update_key = f"{queue_config.prefix}bot:update:41"

    class Killed(Exception):
        pass

    def remember_then_die(pipe) -> None:
        outstanding.track_in(pipe, doomed, give_up_at=time.time() + 60, update_id=41)
        raise Killed  # the process ends before the transaction is sent

    doomed = make_request("не дошёл")
    with pytest.raises(Killed):
        await queue.submit(doomed, along=remember_then_die)
    assert await queue.depth() == 0
    assert await outstanding.get(doomed.request_id) is None and await redis_client.get(update_key) is None
    assert await outstanding.claim_update(41)  # so the update is handled again, by whichever bot gets it

    request = make_request("дошёл")
    await queue.submit(request, along=lambda pipe: outstanding.track_in(pipe, request, time.time() + 60, 42))
    [claimed] = (await queue.claim_batch("w1", max_items=2)).ready
    assert claimed.request.request_id == request.request_id
    assert (await outstanding.get(request.request_id)).prompt == "дошёл"
    assert await redis_client.get(f"{queue_config.prefix}bot:update:42") == "done"


async def test_inline_requests_are_claimed_before_normal_ones(redis_client, queue_config, make_request):
    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    normal = make_request("команда")
    inline = make_request("инлайн", kind="inline", delivery=Delivery(inline_query_id="q1"))
    await queue.submit(normal)
    await queue.submit(inline)

    first = await queue.claim_batch("w1", max_items=1)
    second = await queue.claim_batch("w1", max_items=1)
    assert inline.priority == "high"
    assert [c.request.request_id for c in first.ready + second.ready] == [inline.request_id, normal.request_id]


async def test_inline_requests_that_never_stop_coming_leave_normal_ones_a_share(redis_client, queue_config,
                                                                                make_request):
    """A worker that cannot keep up must not serve inline queries alone while they keep coming: one
    request in NORMAL_EVERY is a normal one, whether claimed one at a time or in batches."""
    from bot.queue.claims import NORMAL_EVERY

    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    for n in range(3):
        await queue.submit(make_request(f"команда {n}"))
    for n in range(4 * NORMAL_EVERY):
        await queue.submit(make_request(f"инлайн {n}", kind="inline", delivery=Delivery(inline_query_id=f"q{n}")))
    one_at_a_time = [(await queue.claim_batch("w1", max_items=1)).ready[0].request for _ in range(2 * NORMAL_EVERY)]
    kinds = [request.kind for request in one_at_a_time]
    assert kinds.count("command") == 2 and kinds[:NORMAL_EVERY - 1] == ["inline"] * (NORMAL_EVERY - 1), kinds
    batch = [c.request for c in (await queue.claim_batch("w1", max_items=NORMAL_EVERY)).ready]
    assert [r.kind for r in batch] == ["inline"] * (NORMAL_EVERY - 1) + ["command"]  # inline first within it
    assert [r.prompt for r in one_at_a_time + batch if r.kind == "command"] == ["команда 0", "команда 1", "команда 2"]


async def test_blocking_claim_wakes_up_when_a_request_arrives(redis_client, queue_config, make_request):
    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    claim = asyncio.create_task(queue.claim_batch("w1", max_items=4, block_ms=2000))
    await asyncio.sleep(0.1)
    request = make_request()
    await queue.submit(request)
    batch = await asyncio.wait_for(claim, 2)
    assert [c.request.request_id for c in batch.ready] == [request.request_id]


async def test_request_past_its_deadline_is_answered_expired(redis_client, queue_config, make_request):
    queue, reader = RequestQueue(redis_client, queue_config), ResultReader(redis_client, queue_config)
    await queue.ensure_groups()
    await reader.ensure_group()
    late = make_request(deadline=time.time() - 1)
    await queue.submit(late)

    batch = await queue.claim_batch("w1", max_items=4)
    assert batch.ready == []
    assert [(r.request_id, r.status) for r in batch.answered] == [(late.request_id, "expired")]
    [received] = await reader.read(block_ms=100)
    assert received.result.status == "expired"
    assert await queue.depth() == 0


async def test_request_delivered_more_than_max_deliveries_is_dead_lettered_and_failed(
    redis_client, queue_config, make_request
):
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, max_deliveries=2, claim_idle_ms=50))
    await queue.ensure_groups()
    request = make_request()
    await queue.submit(request)

    for consumer in ("w1", "w2"):  # two deliveries, both "crash" without answering
        batch = await queue.claim_batch(consumer, max_items=1)
        assert [c.request.request_id for c in batch.ready] == [request.request_id]
        await asyncio.sleep(0.08)
    batch = await queue.claim_batch("w3", max_items=1)

    assert batch.ready == []
    assert [(r.status, r.error) for r in batch.answered] == [("failed", "max_deliveries")]
    [(_, fields)] = await redis_client.xrange(queue.keys.dead_letter)
    dead = DeadLetter.model_validate_json(fields[DATA_FIELD])
    assert (dead.reason, dead.deliveries, dead.worker_id) == ("max_deliveries", 3, "w3")
    assert await queue.depth() == 0


async def test_unparseable_request_is_dead_lettered(redis_client, queue_config):
    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    await redis_client.xadd(queue.keys.requests_normal, {DATA_FIELD: '{"not": "a request"}'})

    batch = await queue.claim_batch("w1", max_items=4)
    assert batch.ready == [] and batch.answered == []
    [(_, fields)] = await redis_client.xrange(queue.keys.dead_letter)
    assert DeadLetter.model_validate_json(fields[DATA_FIELD]).reason == "invalid"
    assert await queue.depth() == 0


async def test_dead_consumers_request_is_reclaimed_after_claim_idle_ms_and_answered_once(
    redis_client, queue_config, make_request
):
    config = dataclasses.replace(queue_config, claim_idle_ms=300)
    queue, reader = RequestQueue(redis_client, config), ResultReader(redis_client, config)
    await queue.ensure_groups()
    request = make_request()
    await queue.submit(request)
    [dying] = (await queue.claim_batch("w1", max_items=1)).ready

    # Not idle long enough yet: shown with a 60 s claim_idle_ms on the same streams, since a loaded machine
    # may well let 300 ms pass before the next call; the sleep below only ever errs on the long side.
    patient = RequestQueue(redis_client, dataclasses.replace(config, claim_idle_ms=60_000))
    assert (await patient.claim_batch("w2", max_items=1)).ready == []
    await asyncio.sleep(0.35)
    [rescued] = (await queue.claim_batch("w2", max_items=1)).ready
    assert rescued.request.request_id == request.request_id and rescued.deliveries == 2

    assert await queue.publish_result(answer_ok(rescued, "w2", "спасён"), rescued)
    # The first worker was only slow, not dead: it no longer owns the request, so its answer is dropped.
    assert not await queue.publish_result(answer_ok(dying, "w1", "поздно"), dying)
    received = await reader.read(block_ms=100)
    assert [r.result.text for r in received] == ["спасён"]


async def test_touch_keeps_a_slow_request_from_being_reclaimed(redis_client, queue_config, make_request):
    # Touches 0.25 s apart against 1.5 s of claim idle time: 1.25 s of margin for a loaded machine's pauses.
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, claim_idle_ms=1500))
    await queue.ensure_groups()
    await queue.submit(make_request())
    claimed = (await queue.claim_batch("w1", max_items=1)).ready
    claimed_at = time.monotonic()

    while time.monotonic() - claimed_at < 2.0:  # past claim_idle_ms: untouched, it would be reclaimed
        await asyncio.sleep(0.25)
        assert await queue.touch(claimed, "w1") == 1
    assert (await queue.claim_batch("w2", max_items=1)).ready == []


async def test_release_without_penalty_hands_back_at_once_and_keeps_the_delivery_count(
    redis_client, queue_config, make_request
):
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, claim_idle_ms=60_000))
    await queue.ensure_groups()
    await queue.submit(make_request())
    claimed = (await queue.claim_batch("w1", max_items=1)).ready

    assert await queue.release(claimed, "w1", penalize=False) == 1
    [again] = (await queue.claim_batch("w2", max_items=1)).ready
    assert again.deliveries == 1


async def test_result_reader_handles_a_duplicated_result_once(redis_client, queue_config, make_request):
    queue, reader = RequestQueue(redis_client, queue_config), ResultReader(redis_client, queue_config)
    await reader.ensure_group()
    result = JokeResult.answer(make_request(), "ok", "w1", text="один раз")
    for _ in range(2):  # e.g. a reclaimed request answered by two workers
        await redis_client.xadd(queue.keys.results, {DATA_FIELD: result.model_dump_json()})

    first = await reader.read(block_ms=100)
    assert [r.result.text for r in first] == ["один раз"]
    await reader.ack(first[0])
    assert await reader.read(block_ms=50) == []
    assert await redis_client.xpending(queue.keys.results, "bot") == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }


async def test_unacked_result_is_read_again_after_reader_restart(redis_client, queue_config, make_request):
    queue = RequestQueue(redis_client, queue_config)
    await queue.publish_result(JokeResult.answer(make_request(), "partial", "w1", text="на"))
    published = JokeResult.answer(make_request(), "ok", "w1", text="нашёлся")
    await redis_client.xadd(queue.keys.results, {DATA_FIELD: published.model_dump_json()})

    crashed = ResultReader(redis_client, queue_config, consumer="bot")
    await crashed.ensure_group()  # the group starts at 0: results published before it are not lost
    assert [r.result.text for r in await crashed.read(block_ms=100)] == ["на", "нашёлся"]
    # ...the bot dies before acking the final result; a new process reads it again.
    restarted = ResultReader(redis_client, queue_config, consumer="bot")
    [again] = await restarted.read(block_ms=100)
    assert again.result.text == "нашёлся"
    await restarted.ack(again)
    assert await ResultReader(redis_client, queue_config, consumer="bot").read(block_ms=50) == []


async def test_partials_older_than_the_final_result_are_ignored(redis_client, queue_config, make_request):
    queue, reader = RequestQueue(redis_client, queue_config), ResultReader(redis_client, queue_config)
    await reader.ensure_group()
    request = make_request(stream_partials=True)
    partial = lambda text: JokeResult.answer(request, "partial", "w1", text=text)  # noqa: E731

    await queue.publish_result(partial("Шт"))
    await queue.publish_result(partial("Штир"))
    assert [r.result.text for r in await reader.read(block_ms=100)] == ["Штир"]  # only the latest of a read

    await redis_client.xadd(queue.keys.results, {DATA_FIELD: JokeResult.answer(request, "ok", "w1",
                                                                                 text="Штирлиц").model_dump_json()})
    await queue.publish_result(partial("Штирли"))  # a straggler from a reclaimed worker
    [final] = await reader.read(block_ms=100)
    assert final.result.text == "Штирлиц"
    await reader.ack(final)
    await queue.publish_result(partial("Штирлиц шёл"))
    assert await reader.read(block_ms=50) == []


async def test_active_size_is_shared_and_validated(redis_client, queue_config):
    queue = RequestQueue(redis_client, queue_config)
    assert await queue.get_active_size() is None
    await queue.set_active_size("mini", by_user=1001)
    assert await queue.get_active_size() == "mini"
    assert await redis_client.hget(queue.keys.active_size, "by_user") == "1001"
    with pytest.raises(ValueError):
        await queue.set_active_size("active", by_user=1001)


async def test_worker_heartbeat_is_live_until_its_ttl_expires(redis_client, queue_config):
    queue = RequestQueue(redis_client, queue_config)
    info = WorkerInfo(worker_id="gpu-1", host="h", pid=1, device="cuda", loaded_sizes=["nano"], batch_size=8)
    # 2 s of TTL: live right after publishing even on a loaded machine; the sleep past it only errs long.
    await queue.publish_heartbeat(info, ttl_s=2.0)
    assert [w.worker_id for w in await queue.live_workers()] == ["gpu-1"]
    await asyncio.sleep(2.1)
    assert await queue.live_workers() == []


async def test_claim_recreates_a_lost_consumer_group(redis_client, queue_config, make_request):
    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    await redis_client.xgroup_destroy(queue.keys.requests_normal, WORKER_GROUP)
    await queue.submit(make_request())

    assert len((await queue.claim_batch("w1", max_items=1)).ready) == 1


async def test_embedded_redis_keeps_queued_requests_across_a_restart(tmp_path, queue_config, make_request):
    for attempt in range(2):
        url, stop = start_embedded_redis(tmp_path / "redis")
        client = connect(url)
        try:
            queue = RequestQueue(client, queue_config)
            if attempt == 0:
                await queue.submit(make_request())
            else:
                assert url.startswith("unix://") and (tmp_path / "redis" / "redis.log").exists()
                assert await queue.depth() == 1
        finally:
            await client.aclose()
            stop()


async def test_claiming_for_a_running_batch_reads_new_requests_but_never_reclaims(
    redis_client, queue_config, make_request
):
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, claim_idle_ms=50))
    await queue.ensure_groups()
    idle, fresh = make_request("idle"), make_request("fresh")
    await queue.submit(idle)
    assert [c.request.request_id for c in (await queue.claim_batch("w1", max_items=1)).ready] == [idle.request_id]
    await asyncio.sleep(0.08)  # now idle long enough to be reclaimed: its batch could still be running
    await queue.submit(fresh)

    joining = await queue.claim_batch("w1", max_items=4, reclaim=False)
    assert [c.request.request_id for c in joining.ready] == [fresh.request_id]
    boundary = await queue.claim_batch("w2", max_items=4)
    assert [c.request.request_id for c in boundary.ready] == [idle.request_id]


async def test_a_running_batch_takes_a_dead_worker_s_idle_requests_but_never_its_own(redis_client, queue_config,
                                                                                     make_request):
    """A busy worker's batch may never end (new requests keep joining it): it must not wait for its end to
    answer what a dead worker held (the fault drill's mini row waited 2 minutes for that)."""
    queue = RequestQueue(redis_client, dataclasses.replace(queue_config, claim_idle_ms=50))
    await queue.ensure_groups()
    mine, dead_workers, fresh = make_request("mine"), make_request("dead"), make_request("fresh")
    await queue.submit(mine)
    await queue.claim_batch("w1", max_items=1)
    await queue.submit(dead_workers)
    await queue.claim_batch("w-dead", max_items=1)
    await asyncio.sleep(0.08)  # both idle past claim_idle_ms
    await queue.submit(fresh)

    joining = await queue.claim_batch("w1", max_items=4, reclaim="others")
    assert sorted(c.request.request_id for c in joining.ready) == sorted([dead_workers.request_id, fresh.request_id])
    (taken,) = [c for c in joining.ready if c.request.request_id == dead_workers.request_id]
    assert taken.deliveries == 2  # counted against MAX_DELIVERIES like any reclaim
    again = await queue.claim_batch("w1", max_items=4, reclaim="others")
    assert again.ready == []  # its own idle request ("mine") stays with its running batch


async def test_the_bot_submits_what_it_waits_for_again_when_redis_lost_it_in_a_restart(redis_server_factory,
                                                                                      queue_config, make_request):
    from bot.queue.connection import connect
    from bot.telegram.outstanding import OutstandingRequests

    server = redis_server_factory(appendonly=False)  # a restart loses everything: the worst of everysec
    client = connect(server.url)
    try:
        outstanding = OutstandingRequests(client, queue_config.prefix)
        submitted: list[str] = []

        async def submit(request):
            submitted.append(request.request_id)

        kept, answered = make_request("штирлиц"), make_request("вовочка")
        for request in (kept, answered):
            await track(outstanding, request, give_up_at=time.time() + 60,
                        update_id=hash(request.request_id) % 10**6)
        assert await outstanding.resubmit_after_restart(submit) == 0  # the first look: nothing restarted
        await outstanding.forget(answered.request_id)
        server.restart(kill=True)
        assert await outstanding.resubmit_after_restart(submit) == 1
        assert submitted == [kept.request_id]
        record = await outstanding.get(kept.request_id)
        assert record is not None and record.prompt == "штирлиц"  # the record is back, for the delivery
        assert await outstanding.resubmit_after_restart(submit) == 0  # once per restart
    finally:
        await client.aclose()
