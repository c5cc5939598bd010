"""Rate limits, votes, /stats numbers and the record of outstanding requests, on a real Redis."""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.queue.protocol import Delivery, JokeRequest
from bot.telegram.feedback import FeedbackStore, percentile
from bot.telegram.outstanding import UPDATE_TTL_S, OutstandingRequests
from bot.telegram.ratelimit import ChatPacer, TokenBucket, UserRateLimiter, is_group_chat
from tests.results_helpers import track


async def test_token_bucket_allows_the_burst_then_says_how_long_to_wait(redis_client, key_prefix):
    # One token a minute: the wait is 60 s less the time the four calls took (Redis's clock), so a loaded
    # machine that takes seconds over them still lands well inside the bound.
    bucket = TokenBucket(redis_client, key_prefix, per_minute=1, burst=3)
    assert [(await bucket.take("u")).allowed for _ in range(3)] == [True, True, True]
    refused = await bucket.take("u")
    assert not refused.allowed and 50 < refused.retry_after_s <= 60
    assert refused.retry_after_s <= refused.retry_after_whole_s < refused.retry_after_s + 1  # whole seconds, up


async def test_token_bucket_refills_with_time(redis_client, key_prefix):
    # One token a second: the second take comes right after the first (a second of margin for a loaded
    # machine), and the wait it is told is enough (sleeping only ever errs long).
    bucket = TokenBucket(redis_client, key_prefix, per_minute=60, burst=1)
    assert (await bucket.take("u")).allowed
    refused = await bucket.take("u")
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after_s + 0.02)
    assert (await bucket.take("u")).allowed


async def test_each_user_has_their_own_bucket(redis_client, key_prefix):
    limiter = UserRateLimiter(redis_client, key_prefix, per_minute=1, burst=1)
    assert (await limiter.check(1)).allowed
    assert not (await limiter.check(1)).allowed
    assert (await limiter.check(2)).allowed


async def test_a_bucket_survives_a_new_limiter_object(redis_client, key_prefix):
    """The state lives in Redis: a restarted bot does not hand out a fresh burst."""
    assert (await UserRateLimiter(redis_client, key_prefix, per_minute=1, burst=1).check(7)).allowed
    assert not (await UserRateLimiter(redis_client, key_prefix, per_minute=1, burst=1).check(7)).allowed


async def test_chat_pacer_waits_for_a_slot_instead_of_refusing(redis_client, key_prefix):
    pacer = ChatPacer(redis_client, key_prefix, per_minute=600, burst=2)  # 10 a second after the burst
    started = time.monotonic()
    waits = [await pacer.wait_turn(-100) for _ in range(4)]
    assert waits[:2] == [0.0, 0.0] and all(w > 0 for w in waits[2:])
    assert time.monotonic() - started >= 0.18


async def test_a_take_with_a_reserve_leaves_it_for_others_and_a_refusal_takes_nothing(redis_client, key_prefix):
    bucket = TokenBucket(redis_client, key_prefix, per_minute=0.01, burst=3)  # no refill within the test
    assert (await bucket.take("k", reserve=1)).allowed      # 3 → 2
    assert (await bucket.take("k", reserve=1)).allowed      # 2 → 1
    refused = await bucket.take("k", reserve=1)             # 1 left: the reserve
    assert not refused.allowed and refused.retry_after_s > 0
    assert (await bucket.take("k")).allowed                 # the refusal took nothing: the last one is there
    assert not (await bucket.take("k")).allowed


async def test_a_progress_edit_in_a_busy_group_is_skipped_and_leaves_the_slot_to_the_final(redis_client, key_prefix):
    from aiogram.methods import EditMessageText

    from bot.telegram.middlewares import GroupPacing, TurnSkipped, best_effort

    made: list[str] = []

    async def make_request(bot, method):
        made.append(method.text)
        return True

    pacing = GroupPacing(ChatPacer(redis_client, key_prefix, per_minute=1, burst=2))
    edit = lambda text: EditMessageText(chat_id=-77, message_id=5, text=text)  # noqa: E731
    with best_effort():
        await pacing(make_request, None, edit("Штирлиц…"))   # two slots: one for this, one left
        started = time.monotonic()
        with pytest.raises(TurnSkipped):
            await pacing(make_request, None, edit("Штирлиц шёл…"))  # the last slot is the final's
        assert time.monotonic() - started < 0.5  # skipped at once, not waited for
    await pacing(make_request, None, edit("Штирлиц шёл по коридору."))  # the final: no wait
    assert made == ["Штирлиц…", "Штирлиц шёл по коридору."]
    assert time.monotonic() - started < 0.5
    await pacing(make_request, None, EditMessageText(chat_id=42, message_id=1, text="x"))  # private: unpaced
    with best_effort():
        await pacing(make_request, None, EditMessageText(chat_id=43, message_id=1, text="y"))


def test_group_chats_have_negative_ids():
    assert is_group_chat(-1001234) and is_group_chat(-5) and not is_group_chat(42) and not is_group_chat(None)


async def test_one_vote_per_user_per_joke_and_votes_can_change(redis_client, key_prefix):
    store = FeedbackStore(redis_client, key_prefix)
    await store.remember_joke("j1", "Штирлиц", "mini", latency_s=0.5)
    assert await store.vote("j1", 1, 1) == "new"
    assert await store.vote("j1", 1, 1) == "same"
    assert await store.vote("j1", 2, 1) == "new"
    assert await store.vote("j1", 1, -1) == "changed"
    (mini,) = await store.size_stats()
    assert (mini.size, mini.jokes, mini.up, mini.down) == ("mini", 1, 1, 1)


async def test_votes_on_forgotten_jokes_are_refused(redis_client, key_prefix):
    assert await FeedbackStore(redis_client, key_prefix).vote("nope", 1, 1) == "unknown"


async def test_latency_percentiles_come_from_recent_jokes(redis_client, key_prefix):
    store = FeedbackStore(redis_client, key_prefix, latency_samples=100)
    for i in range(1, 201):  # only the last 100 (101..200) are kept
        await store.remember_joke(f"j{i}", "p", "nano", latency_s=i / 100)
    latency = await store.latency()
    assert latency.samples == 100 and latency.p50 == pytest.approx(1.50) and latency.p95 == pytest.approx(1.95)


def test_percentile_is_nearest_rank():
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0


def _request(deadline: float) -> JokeRequest:
    return JokeRequest(delivery=Delivery(chat_id=5, reply_to_message_id=9), prompt="Вовочка", deadline=deadline)


async def test_overdue_requests_are_claimed_exactly_once(redis_client, key_prefix):
    outstanding = OutstandingRequests(redis_client, key_prefix)
    late, fresh = _request(time.time() - 5), _request(time.time() + 60)
    await track(outstanding, late, give_up_at=late.deadline)
    await track(outstanding, fresh, give_up_at=fresh.deadline)
    first, second = await asyncio.gather(outstanding.claim_overdue(), outstanding.claim_overdue())
    assert [r.request_id for r in first + second] == [late.request_id]
    assert (await outstanding.get(late.request_id)).prompt == "Вовочка"  # kept for a late answer


async def test_a_message_created_later_is_remembered_for_the_request(redis_client, key_prefix):
    outstanding = OutstandingRequests(redis_client, key_prefix)
    request = _request(time.time() + 60)
    await track(outstanding, request, give_up_at=request.deadline)
    await outstanding.set_message_id(request.request_id, 77)
    assert (await outstanding.get(request.request_id)).delivery.message_id == 77
    await outstanding.forget(request.request_id)
    assert await outstanding.get(request.request_id) is None
    assert await outstanding.claim_overdue(time.time() + 120) == []


async def test_an_inline_message_is_started_once(redis_client, key_prefix):
    outstanding = OutstandingRequests(redis_client, key_prefix)
    assert [await outstanding.claim_inline_message("im1") for _ in range(2)] == [True, False]


async def test_an_update_is_handled_once_unless_the_process_handling_it_died(redis_client, key_prefix):
    bot, restarted = OutstandingRequests(redis_client, key_prefix), OutstandingRequests(redis_client, key_prefix)
    assert await asyncio.gather(bot.claim_update(1), bot.claim_update(1)) in ([True, False], [False, True])
    assert await restarted.claim_update(1)  # the first process never settled it: it died in the middle
    assert not await restarted.claim_update(1)  # in hand here
    request = _request(time.time() + 60)
    await bot.claim_update(2)
    await track(bot, request, give_up_at=request.deadline, update_id=2)  # the update became this request
    await bot.settle_update(3)  # ...or a refusal
    for update_id in (2, 3):
        assert not await restarted.claim_update(update_id) and not await bot.claim_update(update_id)
    ttl = await redis_client.ttl(f"{key_prefix}bot:update:2")
    assert 24 * 3600 < ttl <= UPDATE_TTL_S  # outlives Telegram's 24 h of re-delivery
    assert await bot.claim_update(None)  # no update id (not from Telegram): nothing to dedupe


async def test_every_message_in_every_chat_spends_one_global_budget_shared_by_bot_processes(redis_client, key_prefix):
    from aiogram.methods import AnswerCallbackQuery, SendMessage

    from bot.telegram.middlewares import GroupPacing
    from bot.telegram.ratelimit import global_pacer

    sent: list[float] = []

    async def make_request(bot, method):
        sent.append(time.monotonic())
        return True

    # two bot processes (replicas), one Redis: 5 a second between them, whichever private chat
    replicas = [GroupPacing(ChatPacer(redis_client, key_prefix, per_minute=600), global_pacer(redis_client, key_prefix, 5))
                for _ in range(2)]
    started = time.monotonic()
    for n in range(9):
        await replicas[n % 2](make_request, None, SendMessage(chat_id=1000 + n, text="x"))
    assert time.monotonic() - started >= 0.7  # a burst of 5, then 4 more at 0.2 s each
    for _ in range(20):  # answers to button presses are not messages: never paced
        await replicas[0](make_request, None, AnswerCallbackQuery(callback_query_id="1"))
    assert sent[-1] - sent[-20] < 0.2


async def test_flood_control_retries_telegram_trouble_but_never_resends_what_may_have_been_sent():
    from aiogram.exceptions import TelegramNetworkError, TelegramServerError
    from aiogram.methods import EditMessageText, GetMe, GetUpdates, SendMessage
    from prometheus_client import CollectorRegistry

    from bot.common.metrics import Metrics
    from bot.telegram.middlewares import FloodControl

    control = FloodControl(Metrics(CollectorRegistry()), backoff_s=0.01)

    def failing(error: Exception, times: int):
        tries: list[str] = []

        async def make_request(bot, method):
            tries.append(type(method).__name__)
            if len(tries) <= times:
                raise error
            return True
        return make_request, tries

    server, network = TelegramServerError(method=None, message="Bad Gateway"), TelegramNetworkError(None, "reset")
    make_request, tries = failing(server, 2)  # a 5xx did nothing: a send is tried again
    assert await control(make_request, None, SendMessage(chat_id=1, text="x")) is True and len(tries) == 3
    make_request, tries = failing(network, 2)  # an edit is the same edit however often it lands
    assert await control(make_request, None, EditMessageText(chat_id=1, message_id=1, text="x")) and len(tries) == 3
    make_request, tries = failing(network, 1)  # a send whose connection failed may have arrived: the caller decides
    with pytest.raises(TelegramNetworkError):
        await control(make_request, None, SendMessage(chat_id=1, text="x"))
    assert len(tries) == 1
    make_request, tries = failing(server, 1)  # aiogram's polling backs off by itself
    with pytest.raises(TelegramServerError):
        await control(make_request, None, GetUpdates())
    make_request, tries = failing(network, 1)  # the delivery's probe: one try, so it sees Telegram's return at once
    with pytest.raises(TelegramNetworkError):
        await control(make_request, None, GetMe())
    assert len(tries) == 1
    make_request, tries = failing(server, 5)  # and the retries end
    with pytest.raises(TelegramServerError):
        await control(make_request, None, SendMessage(chat_id=1, text="x"))
    assert len(tries) == control.transient_attempts
