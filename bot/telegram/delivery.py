"""The bot's half of the results stream: read what workers answered and show it to the users.

One background task (`DeliveryLoop.run`) reads `ResultReader`; each result is delivered in a task
of its own, chained per request so that a partial never lands after its final text. Finals are
acked only once delivered, so a bot restart delivers what it had not. Requests whose answer never
comes are given up on at their give-up time (kept in Redis by `OutstandingRequests`) with an
apology: nothing hangs silently. Every final answer is logged once with its request_id, status and
latency from the update that asked, and counted in the metrics; `health()` feeds the bot's /healthz.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import Any, Awaitable, Callable, TypeVar

from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InlineKeyboardMarkup, Message
from redis.exceptions import RedisError

from bot.common.health import Liveness
from bot.common.metrics import Metrics
from bot.common.tasks import cancel_and_wait
from bot.queue.connection import is_outage
from bot.queue.protocol import JokeRequest, JokeResult
from bot.queue.results import ReceivedResult, ResultReader
from bot.telegram import texts
from bot.telegram.daily import DailyJokes, is_daily_post, joke_id_for
from bot.telegram.feedback import FeedbackStore
from bot.telegram.keyboards import delivery_scope, joke_keyboard
from bot.telegram.middlewares import TurnSkipped, best_effort
from bot.telegram.outbox import Outbox
from bot.telegram.outstanding import Outstanding, OutstandingRequests
from bot.telegram.prompts import clean_model_text
from bot.telegram.ratelimit import is_group_chat
from bot.telegram.shown import report_shown
from bot.telegram.signing import Signer
from bot.telegram.waiters import InlineWaiters

log = logging.getLogger(__name__)

T = TypeVar("T")
# Telegram's trouble, not the message's: a 5xx or a failed connection (reset, timeout). Worth trying again.
TRANSIENT = (TelegramServerError, TelegramNetworkError)
# How Telegram refuses a post into a forum topic that was deleted or closed.
_TOPIC_GONE = ("thread not found", "topic_deleted", "topic_closed")
RETRY_PAUSE_S = 2.0
# Between getMe probes after a failed connection: one cheap call, so Telegram's return is seen within this.
PROBE_PAUSE_S = 0.5
# How often unacknowledged results are read again (besides right after a Redis outage).
PENDING_REREAD_S = 30.0

# A result's status -> the name of the text that explains it.
STATUS_TEXTS = {"expired": "TIMEOUT", "busy": "BUSY", "failed": "FAILED", "unknown_size": "UNKNOWN_SIZE"}


class DeliveryLoop:
    def __init__(self, reader: ResultReader, outstanding: OutstandingRequests, feedback: FeedbackStore,
                 outbox: Outbox, waiters: InlineWaiters, metrics: Metrics, signer: Signer, daily: DailyJokes,
                 edit_interval_s: float, sweep_interval_s: float = 1.0, retry_s: float = 120.0,
                 resubmit: Callable[[JokeRequest], Awaitable[object]] | None = None) -> None:
        self.reader = reader
        self.outstanding = outstanding
        self.feedback = feedback
        self.outbox = outbox
        self.waiters = waiters
        self.metrics = metrics
        self.signer = signer
        self.daily = daily
        self.edit_interval_s = edit_interval_s
        self.sweep_interval_s = sweep_interval_s
        self.retry_s = retry_s
        self.resubmit = resubmit or (lambda request: asyncio.sleep(0))  # RequestQueue.submit in the bot
        self._tasks: dict[str, asyncio.Task] = {}       # the latest delivery task per request
        self._finals: set[str] = set()                    # requests whose final result is being delivered
        self._last_partial: dict[str, float] = {}       # monotonic time of the last streamed update
        self._drafts_paused_until: dict[str, float] = {}
        self._liveness = Liveness()  # for /healthz: the loop went round, a read of the results stream succeeded
        self._reading: asyncio.Task | None = None

    async def run(self) -> None:
        """Until cancelled. Redis outages are waited out, not fatal."""
        await self.reader.ensure_group()
        next_sweep, next_reread, redis_failed = 0.0, time.monotonic() + PENDING_REREAD_S, False
        while True:
            try:
                if redis_failed or time.monotonic() >= next_reread:
                    # A final whose delivery failed (Redis refused a write, say) is unacked: read it again.
                    self.reader.reread_pending()
                    next_reread, redis_failed = time.monotonic() + PENDING_REREAD_S, False
                for item in await self.reader.read(count=50, block_ms=int(self.sweep_interval_s * 1000)):
                    self._dispatch(item)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval_s
                    if resubmitted := await self.outstanding.resubmit_after_restart(self.resubmit):
                        log.warning("Redis restarted: submitted the %d requests this bot waits for again", resubmitted)
                    for record in await self.outstanding.claim_overdue():
                        self._chain(record.request_id, self._give_up(record))
                self._liveness.redis_answered()
            except RedisError as error:
                log.warning("Redis unavailable while reading results (%s); retrying", error)
                redis_failed = True
                await asyncio.sleep(1.0)
            except Exception:  # a bug: loud in the logs, but keep delivering what can be delivered
                log.exception("the delivery loop failed; continuing")
                await asyncio.sleep(1.0)
            self._liveness.loop_went_round()

    def health(self, stale_after_s: float) -> dict[str, Any]:
        """Healthy while the loop went round and Redis answered within the last `stale_after_s`."""
        return {**self._liveness.report(stale_after_s, loop_key="delivery_loop_age_s"), "delivering": len(self._tasks)}

    def start(self) -> None:
        """Run the loop in a background task, until `stop_reading`."""
        if self._reading is None:
            self._reading = asyncio.create_task(self.run(), name="results-reader")

    async def stop_reading(self) -> None:
        """Stop reading results. What was read and not delivered stays unacked: re-read after a restart."""
        if self._reading is not None:
            await cancel_and_wait(self._reading)

    async def close(self) -> None:
        """Wait for the deliveries in progress (after `stop_reading`).

        Cancelled (the shutdown's time is up), it cancels them: a final result is acked only once
        shown, so one cut short is re-read and delivered after a restart.
        """
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abandon(self) -> None:
        """Cancel the deliveries in progress (after `stop_reading`), for a process that lost the Telegram lease:
        the one that holds it now re-reads the results not acked here, so finishing them would show them twice."""
        # Cancelled again soon if one runs on: it has no clean-up to wait for, and what it sent would show twice.
        await cancel_and_wait(*self._tasks.values(), redeliver_s=0.05)

    # -- dispatching ---------------------------------------------------------------------------------

    def _dispatch(self, item: ReceivedResult) -> None:
        result = item.result
        if result.delivery.inline_query_id is not None:
            self.waiters.resolve(result)
            if result.is_final:
                self._chain(result.request_id, self.reader.ack(item))
            return
        if result.is_final:
            if result.request_id in self._finals:
                return  # read again while its delivery is still under way (reread_pending): that one acks it
            self._finals.add(result.request_id)

            async def final() -> None:
                try:
                    await self._final(item)
                finally:
                    self._finals.discard(result.request_id)

            self._chain(result.request_id, final())
            return
        running = self._tasks.get(result.request_id)
        recent = time.monotonic() - self._last_partial.get(result.request_id, float("-inf")) < self.edit_interval_s
        if (running is None or running.done()) and not recent:  # best effort: skip rather than pile up
            self._last_partial[result.request_id] = time.monotonic()
            self._chain(result.request_id, self._partial(result))

    def _chain(self, request_id: str, step: Awaitable[None]) -> None:
        """Run `step` after whatever is still being delivered for this request."""
        previous = self._tasks.get(request_id)

        async def after_previous() -> None:
            if previous is not None:
                with suppress(Exception):
                    await previous
            try:
                await step
            except Exception:
                log.exception("delivering request %s failed", request_id)

        def forget_if_last(done: asyncio.Task) -> None:
            if self._tasks.get(request_id) is done:
                del self._tasks[request_id]

        task = asyncio.create_task(after_previous())
        self._tasks[request_id] = task
        task.add_done_callback(forget_if_last)

    async def _retrying(self, call: Callable[[], Awaitable[T]], passing: Callable[[Exception], bool], what: str,
                        wait_for: Callable[[Exception, float], Awaitable[bool]] | None = None) -> T:
        """`call()`, tried again while it fails with an error `passing` says will pass, for up to `retry_s`; then
        it raises. Between tries, `wait_for(error, deadline)` if given, else (or where it returns False, not
        having waited) a pause of RETRY_PAUSE_S."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return await call()
            except Exception as error:
                if not passing(error) or time.monotonic() >= deadline:
                    raise
                log.warning("%s: %s; trying again", what, error)
                if wait_for is None or not await wait_for(error, deadline):
                    await asyncio.sleep(RETRY_PAUSE_S)

    async def _persist(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        """`send()` while Telegram has trouble (5xx, a failed connection).

        A 5xx did nothing, so a retry is safe. A reset or a timeout may hide a message that was sent, so a
        retried *send* can show twice (an edit cannot: placeholders make that case safe); after one, the next
        try waits for `_telegram_answering_again`. BENCHMARKS.md counts the copies.
        """
        return await self._retrying(send, lambda error: isinstance(error, TRANSIENT),
                                    f"showing {what}, Telegram unavailable", wait_for=self._telegram_answering_again)

    async def _telegram_answering_again(self, error: Exception, deadline: float) -> bool:
        """After a failed connection, until getMe is answered within the client's timeout (or the deadline): a
        Telegram that answers too late for a minute then costs a sent message one copy, not one per retry, and
        the retry goes out as soon as Telegram is back. Any other error: False, not waited for."""
        if not isinstance(error, TelegramNetworkError):
            return False
        while time.monotonic() < deadline:
            try:
                await self.outbox.bot.get_me()
                return True
            except TRANSIENT:
                await asyncio.sleep(PROBE_PAUSE_S)
        return True

    async def _until_redis_answers(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write()` while Redis is unreachable or refuses writes."""
        return await self._retrying(write, lambda error: isinstance(error, RedisError) and is_outage(error),
                                    "Redis unavailable")

    # -- the three kinds of delivery ------------------------------------------------------------------

    async def _partial(self, result: JokeResult) -> None:
        record = await self.outstanding.get(result.request_id)
        text = clean_model_text(result.text)
        if record is None or not text:
            return  # answered already, or nothing to show yet
        delivery, t = record.delivery, texts.get(record.language)
        try:
            if delivery.chat_id is not None and delivery.message_id is None:
                if time.monotonic() < self._drafts_paused_until.get(result.request_id, 0.0):
                    return
                if await self.outbox.draft(delivery.chat_id, result.request_id, text, delivery.message_thread_id):
                    return
                # Drafts don't work here: from now on a message shows the progress, edited in place.
            with best_effort():  # in a busy group the finished joke gets the slot, not this progress
                message_id = await self.outbox.show(delivery, text + t.TYPING_SUFFIX)
            if message_id is not None:
                await self.outstanding.set_message_id(result.request_id, message_id)
        except TurnSkipped:
            return
        except TelegramRetryAfter as error:
            # Flood control: pause this joke's drafts, never hammer. Edits were already waited out.
            self._drafts_paused_until[result.request_id] = time.monotonic() + error.retry_after
        except TelegramAPIError as error:
            log.info("partial update of %s not shown: %s", result.request_id, error)

    async def _final(self, item: ReceivedResult) -> None:
        result = item.result
        if is_daily_post(result.request_id):
            await self._daily_post(item)
            return
        record = await self.outstanding.get(result.request_id)
        if record is None and not await self.reader.still_pending(item):
            return  # delivered and acked while this copy was being read again: nothing to do
        delivery = record.delivery if record is not None else result.delivery
        t = texts.get(record.language if record is not None else None)
        markup, joke, outcome = None, clean_model_text(result.text), result.status
        if result.status == "ok" and joke:
            text, markup = joke, joke_keyboard(result.request_id, self.signer, delivery_scope(delivery), t)
            # Before the buttons appear: a press must find the joke.
            await self.feedback.remember_joke(result.request_id, record.prompt if record else "",
                                              result.size or "?", result.latency_s)
        elif result.status == "ok":
            text, outcome = t.EMPTY_JOKE, "empty"
        else:
            text = getattr(t, STATUS_TEXTS.get(result.status, "FAILED"))
            log.warning("request %s answered %s (%s)", result.request_id, result.status, result.error)
        try:
            message_id = await self._persist(result.request_id, lambda: self.outbox.show(delivery, text, markup)) \
                or delivery.message_id
            if markup is not None and message_id is not None and is_group_chat(delivery.chat_id):
                # A reply to this message asks for a joke (handlers/joke.py). Shown already: wait for Redis.
                await self._until_redis_answers(
                    lambda: self.feedback.remember_chat_joke(delivery.chat_id, message_id, result.request_id))
        except TelegramAPIError as error:  # blocked by the user, chat gone, flood ban: nothing more to do
            outcome = "undelivered"
            log.warning("could not deliver %s to %s: %s", result.request_id, delivery, error)
        # From the update that asked (the record remembers it); a record from an older bot: from the worker.
        created_at = record.created_at if record is not None and record.created_at else None
        latency_s = time.time() - created_at if created_at else result.latency_s
        report_shown(self.metrics, result.request_id, record.kind if record is not None else "unknown", result.size,
                    result.status, outcome, latency_s)
        # Shown: from here on a failure would show it twice after a re-read, so Redis is waited for.
        await self._until_redis_answers(lambda: self.outstanding.forget(result.request_id))
        await self._until_redis_answers(lambda: self.reader.ack(item))
        self._last_partial.pop(result.request_id, None)
        self._drafts_paused_until.pop(result.request_id, None)

    async def _daily_post(self, item: ReceivedResult) -> None:
        """A joke of the day: sent as a new message once (DailyJokes.claim_send), or left for the next attempt."""
        result, post_id = item.result, item.result.request_id
        record = await self.outstanding.get(post_id)
        chat_id = self.daily.chat_of(post_id)
        subscription = await self.daily.get(chat_id)
        t = texts.get(subscription.language if subscription is not None else record.language if record else None)
        joke = clean_model_text(result.text) if result.status == "ok" else ""
        outcome = result.status if result.status != "ok" else "ok" if joke else "empty"
        if not joke:  # expired, failed, empty: nobody is waiting for an apology; the lease's end retries it
            log.warning("daily post %s: the joke came back %s; trying again later", post_id, outcome)
        elif await self.daily.claim_send(post_id):
            # In a channel 🔁 Ещё would let any reader post into it: votes only there.
            joke_id = joke_id_for(post_id)
            markup = joke_keyboard(joke_id, self.signer, delivery_scope(result.delivery), t,
                                   more=subscription is None or subscription.chat_type != "channel")
            await self.feedback.remember_joke(joke_id, record.prompt if record is not None else "", result.size or "?",
                                              result.latency_s)
            try:
                thread_id = subscription.thread_id if subscription is not None else None
                message = await self._persist(post_id, lambda: self._send_daily(chat_id, f"{t.DAILY_HEADER}\n\n{joke}",
                                                                                 markup, thread_id))
            except TelegramForbiddenError as error:  # removed from the chat, blocked: stop posting there
                outcome = "undelivered"
                log.warning("daily post %s: %s; unsubscribing chat %s", post_id, error, chat_id)
                await self.daily.unsubscribe(chat_id)
                await self.daily.done(post_id)
            except TelegramAPIError as error:
                outcome = "undelivered"
                log.warning("daily post %s not sent (%s); trying again later", post_id, error)
                await self.daily.release_send(post_id)
            else:
                await self.daily.done(post_id)
                if is_group_chat(chat_id):
                    await self.feedback.remember_chat_joke(chat_id, message.message_id, joke_id)
        else:
            outcome = "duplicate"
            await self.daily.done(post_id)
        report_shown(self.metrics, post_id, "daily", result.size, result.status, outcome, result.latency_s)
        await self.outstanding.forget(post_id)
        await self.reader.ack(item)

    async def _send_daily(self, chat_id: int, text: str, markup: InlineKeyboardMarkup,
                          thread_id: int | None) -> Message:
        """A daily post, in its topic; a topic deleted or closed since /daily takes it to the group's General."""
        try:
            return await self.outbox.send(chat_id, text, reply_markup=markup, thread_id=thread_id)
        except TelegramBadRequest as error:
            if thread_id is None or not any(gone in str(error).lower() for gone in _TOPIC_GONE):
                raise
            log.info("daily post for chat %s: topic %s is gone (%s); posting in General", chat_id, thread_id, error)
            return await self.outbox.send(chat_id, text, reply_markup=markup)

    async def _give_up(self, claimed: Outstanding) -> None:
        record = await self.outstanding.get(claimed.request_id)
        if record is None:
            return  # its answer was delivered just before (a result read in the same round)
        if is_daily_post(record.request_id):  # nobody asked: no apology; DailyJokes tries again
            await self.outstanding.forget(record.request_id)
            return
        log.warning("request %s got no answer by its give-up time; telling the user", record.request_id)
        latency_s = time.time() - record.created_at if record.created_at else None
        report_shown(self.metrics, record.request_id, record.kind, None, None, "no_answer", latency_s)
        self._last_partial.pop(record.request_id, None)
        self._drafts_paused_until.pop(record.request_id, None)
        await self.feedback.count_timeout()
        try:
            message_id = await self._persist(record.request_id, lambda: self.outbox.show(
                record.delivery, texts.get(record.language).TIMEOUT))
        except TelegramAPIError as error:
            log.warning("could not tell %s about the timeout: %s", record.delivery, error)
            return
        if message_id is not None:  # a late answer edits this message instead of sending another
            await self.outstanding.set_message_id(record.request_id, message_id)
