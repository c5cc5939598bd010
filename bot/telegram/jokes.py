"""Starting a joke: the steps every entry point shares (commands, plain text, 🔁 Ещё, inline).

claim the update → validate the prompt → rate-limit the user → show activity → check for live workers
→ remember and submit the request (one transaction: a bot killed meanwhile leaves neither, and the update is
handled again). Every refusal is said to the user at once; the answer itself arrives
later through `DeliveryLoop`. Refusals and the texts around a joke are in the language of whoever asked
(`ChatOrigin.language`, bot/telegram/texts.py); the delivery finds it in the request's record. Each
accepted request is logged once, with the update it came from and its request_id, which the worker's and
the delivery's log lines repeat.

Telegram re-delivers the updates a killed bot had not confirmed: an update that already became a
request (or a refusal) is claimed in Redis and passed over the second time, before any rate limit,
message or placeholder; the request it became is answered as any other after a restart.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from aiogram.exceptions import TelegramNetworkError, TelegramServerError
from aiogram.types import InlineKeyboardMarkup

from bot.common.logs import log_event
from bot.common.metrics import Metrics
from bot.common.settings import Settings
from bot.queue.client import RequestQueue
from bot.queue.protocol import ACTIVE_SIZE, Delivery, JokeRequest, JokeResult, SamplingParams
from bot.queue.submit import QueueFull
from bot.telegram import texts
from bot.telegram.chat_settings import ChatSettingsStore, sampling_for
from bot.telegram.daily import Subscription
from bot.telegram.feedback import FeedbackStore
from bot.telegram.notices import Notices
from bot.telegram.outbox import Outbox
from bot.telegram.outstanding import OutstandingRequests
from bot.telegram.prompts import PromptTooLong, clean_model_text, clean_prompt, random_opening
from bot.telegram.ratelimit import UserRateLimiter
from bot.telegram.shown import report_shown
from bot.telegram.texts import Texts
from bot.telegram.user_stats import UserStatsStore
from bot.telegram.waiters import InlineWaiters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatOrigin:
    """Who asked for a joke, and where."""

    chat_id: int
    user_id: int
    private: bool
    reply_to_message_id: int | None = None
    thread_id: int | None = None  # the forum topic asked in (None: the chat itself, or a group's General)
    update_id: int | None = None  # for the logs: which update asked
    language: str = texts.DEFAULT_LANGUAGE  # of the texts around the joke (bot/telegram/texts.py)


def topic_of(message) -> int | None:
    """The forum topic a message is in; None outside topics (a reply in a group's General carries a
    message_thread_id too, which is no topic: Telegram refuses it as a target). An inaccessible message: None."""
    return getattr(message, "message_thread_id", None) if getattr(message, "is_topic_message", None) else None


class JokeService:
    def __init__(self, settings: Settings, queue: RequestQueue, outstanding: OutstandingRequests,
                 limiter: UserRateLimiter, inline_limiter: UserRateLimiter, feedback: FeedbackStore,
                 outbox: Outbox, waiters: InlineWaiters, metrics: Metrics, chat_settings: ChatSettingsStore,
                 notices: Notices, user_stats: UserStatsStore) -> None:
        self.settings = settings
        self.queue = queue
        self.outstanding = outstanding
        self.limiter = limiter
        self.inline_limiter = inline_limiter
        self.feedback = feedback
        self.outbox = outbox
        self.waiters = waiters
        self.metrics = metrics
        self.chat_settings = chat_settings
        self.notices = notices
        self.user_stats = user_stats

    def prompt_or_refusal(self, raw: str | None, t: Texts, *, truncate: bool = False) -> tuple[str, str | None]:
        """(prompt, None), or ("", a message saying why not). An empty prompt becomes a classic opening."""
        try:
            prompt = clean_prompt(raw, self.settings.prompt_max_chars, truncate=truncate)
        except PromptTooLong as error:
            return "", t.plural("PROMPT_TOO_LONG", error.length, length=error.length, limit=error.limit)
        return prompt or random_opening(), None

    def _request(self, kind: str, delivery: Delivery, user_id: int | None, prompt: str, *, received_at: float,
                 request_id: str | None = None, timeout_s: float | None = None, sampling: SamplingParams | None = None,
                 **fields) -> JokeRequest:
        """`received_at`: when the update arrived; the request's latency (worker and bot) counts from it.
        `sampling`: a chat's own (see `_chat_params`); the deployment's by default."""
        timeout_s = timeout_s if timeout_s is not None else self.settings.request_timeout_s
        return JokeRequest(request_id=request_id or uuid.uuid4().hex, kind=kind, delivery=delivery, user_id=user_id,
                           prompt=prompt, sampling=sampling or self.settings.sampling_params(),
                           created_at=received_at, deadline=time.time() + timeout_s, **fields)

    async def _submit_tracked(self, request: JokeRequest, update_id: int | None, t: Texts) -> bool:
        """Remember and submit, in one transaction; on a full queue tell the user "busy" right away."""
        give_up_at = request.deadline + self.settings.result_grace_s
        try:
            await self.queue.submit(request, along=lambda pipe: self.outstanding.track_in(
                pipe, request, give_up_at, update_id, t.language))
        except QueueFull as error:
            log.warning("refused %s: %s", request.request_id, error)
            self.metrics.request_event(request.kind, request.size, "busy")
            await self.outstanding.forget(request.request_id)
            await self.outbox.show(request.delivery, t.BUSY)
            return False
        except BaseException:
            # Not queued (Redis down, cancelled): the error handler speaks; no timeout apology later.
            await asyncio.shield(self.outstanding.forget(request.request_id))
            raise
        self._accepted(request, update_id)
        await self.feedback.count_request()
        if request.user_id is not None:
            await self.user_stats.count_joke(request.user_id, request.prompt)
        return True

    def _accepted(self, request: JokeRequest, update_id: int | None) -> None:
        self.metrics.request_event(request.kind, request.size, "accepted")
        delivery = request.delivery
        fields = {"request_id": request.request_id, "update_id": update_id, "user_id": request.user_id,
                  "chat_id": delivery.chat_id, "kind": request.kind}
        if delivery.inline_message_id is not None:
            fields["inline_message_id"] = delivery.inline_message_id
        if delivery.inline_query_id is not None:
            fields["inline_query_id"] = delivery.inline_query_id
        log_event(log, "accepted", fields)

    def _refused(self, kind: str, outcome: str) -> None:
        self.metrics.request_event(kind, None, outcome)

    async def _first_delivery(self, update_id: int | None, kind: str) -> bool:
        """False (and logged) for an update handled before: a re-delivery after a bot restart."""
        if await self.outstanding.claim_update(update_id):
            return True
        self._refused(kind, "duplicate")
        log_event(log, "duplicate update", {"update_id": update_id, "kind": kind})
        return False

    async def _workers_alive(self) -> bool:
        return bool(await self.queue.live_workers())

    async def _chat_params(self, chat_id: int) -> tuple[SamplingParams, str] | None:
        """The chat's sampling and size for its next request; None when no worker is alive.

        A size the chat chose that no live worker has (or the admins no longer offer) falls back to the
        active one: a joke from another size beats "this model is unavailable" on every request.
        """
        workers = await self.queue.live_workers()
        if not workers:
            return None
        chat = await self.chat_settings.get(chat_id)
        loaded = {size for worker in workers for size in worker.loaded_sizes}
        size = chat.size if chat.size in loaded else ACTIVE_SIZE
        if size != chat.size:
            log.info("chat %s asked for size %s, which no live worker has; using the active size", chat_id, chat.size)
        return sampling_for(self.settings, chat), size

    # -- chats ---------------------------------------------------------------------------------------

    async def joke_in_chat(self, origin: ChatOrigin, raw_prompt: str | None, kind: str = "command",
                           *, truncate: bool = False) -> None:
        received_at = time.time()  # handlers run as the update arrives
        if not await self._first_delivery(origin.update_id, kind):
            return
        # The rate limit first: every ask costs a joke, a refused too-long one included, so that no kind of
        # ask makes the bot answer without bound.
        t = texts.get(origin.language)
        decision = await self.limiter.check(origin.user_id)
        prompt, refusal = self.prompt_or_refusal(raw_prompt, t, truncate=truncate)
        outcome = "too_long"
        if not decision.allowed:
            refusal, outcome = t.RATE_LIMITED.format(seconds=decision.retry_after_whole_s), "rate_limited"
        if refusal is not None:
            self._refused(kind, outcome)
            if outcome != "rate_limited" or await self.limiter.first_refusal(origin.user_id, origin.chat_id, decision):
                await self.outbox.send(origin.chat_id, refusal, origin.reply_to_message_id, thread_id=origin.thread_id)
            await self.outstanding.settle_update(origin.update_id)
            return
        await self.outbox.typing(origin.chat_id, origin.thread_id)
        params = await self._chat_params(origin.chat_id)
        if params is None:
            # Said now rather than queued: the user hears within seconds, and no stale joke turns up later.
            self._refused(kind, "workers_down")
            await self.outbox.send(origin.chat_id, t.WORKERS_DOWN, origin.reply_to_message_id,
                                   thread_id=origin.thread_id)
            await self.outstanding.settle_update(origin.update_id)
            return
        await self.notices.jokes_are_russian(origin.user_id, origin.chat_id, t, origin.thread_id)
        await self._start_in_chat(origin, prompt, kind, received_at, params)

    async def admit_more(self, origin: ChatOrigin) -> tuple[bool, str]:
        """Before 🔁 Ещё under a joke in a chat starts (`more_in_chat`): (go ahead?, the press's answer).

        Refusals (rate limit, no workers) are the callback's answer, never a message: pressing the button
        fast must not flood the chat. A re-delivered press does not go ahead.
        """
        t = texts.get(origin.language)
        if not await self._first_delivery(origin.update_id, "more"):
            return False, t.MORE_STARTED
        decision = await self.limiter.check(origin.user_id)
        refusal, outcome = None, None
        if not decision.allowed:
            refusal, outcome = t.RATE_LIMITED.format(seconds=decision.retry_after_whole_s), "rate_limited"
        elif not await self._workers_alive():
            refusal, outcome = t.WORKERS_DOWN, "workers_down"
        if refusal is not None:
            self._refused("more", outcome)
            await self.outstanding.settle_update(origin.update_id)
            return False, refusal
        return True, t.MORE_STARTED

    async def more_in_chat(self, origin: ChatOrigin, prompt: str) -> None:
        """🔁 Ещё, once `admit_more` let it go ahead."""
        received_at = time.time()
        await self.outbox.typing(origin.chat_id, origin.thread_id)
        await self._start_in_chat(origin, prompt, "more", received_at)

    async def _start_in_chat(self, origin: ChatOrigin, prompt: str, kind: str, received_at: float,
                             params: tuple[SamplingParams, str] | None = None) -> None:
        """`params`: the chat's sampling and size (`_chat_params`), looked up here when not given."""
        if params is None:
            params = await self._chat_params(origin.chat_id) or (self.settings.sampling_params(), ACTIVE_SIZE)
        request_id = uuid.uuid4().hex
        delivery = Delivery(chat_id=origin.chat_id, reply_to_message_id=origin.reply_to_message_id,
                            message_thread_id=origin.thread_id)
        # Private chats stream into a message draft (empty text shows "Thinking…"); elsewhere, or
        # where drafts fail, a placeholder message is edited instead. Groups get no streamed edits:
        # their budget is ~20 messages a minute.
        t = texts.get(origin.language)
        if not (origin.private and await self.outbox.draft(origin.chat_id, request_id, "", origin.thread_id)):
            try:
                placeholder = await self.outbox.send(origin.chat_id, t.PLACEHOLDER, origin.reply_to_message_id,
                                                     thread_id=origin.thread_id)
                delivery = delivery.model_copy(update={"message_id": placeholder.message_id})
            except (TelegramServerError, TelegramNetworkError) as error:
                # Telegram is in trouble: the joke is written anyway, and shown as a new message once it can be.
                log.warning("no placeholder in chat %s (%s); the joke will come as a new message", origin.chat_id,
                            error)
        sampling, size = params
        request = self._request(kind, delivery, origin.user_id, prompt, received_at=received_at,
                                request_id=request_id, stream_partials=origin.private, sampling=sampling, size=size)
        await self._submit_tracked(request, origin.update_id, t)

    # -- the daily joke ------------------------------------------------------------------------------

    async def daily_joke(self, subscription: Subscription, post_id: str) -> None:
        """Submit a chat's joke of the day (bot/telegram/daily.py); its id is the post's, so a repeat is a
        duplicate the results reader drops. Raises QueueFull. No rate limit (nobody asked), no live-worker check
        (a request that finds none expires, and the post is tried again)."""
        params = await self._chat_params(subscription.chat_id) or (self.settings.sampling_params(), ACTIVE_SIZE)
        sampling, size = params
        request = self._request("daily", Delivery(chat_id=subscription.chat_id), subscription.by_user,
                                random_opening(), received_at=time.time(), request_id=post_id, sampling=sampling,
                                size=size)
        give_up_at = request.deadline + self.settings.result_grace_s
        try:
            await self.queue.submit(request, along=lambda pipe: self.outstanding.track_in(
                pipe, request, give_up_at, language=subscription.language))
        except BaseException:
            await asyncio.shield(self.outstanding.forget(request.request_id))
            raise
        self._accepted(request, None)

    # -- inline --------------------------------------------------------------------------------------

    async def inline_prompt_or_hint(self, user_id: int, raw: str, t: Texts) -> tuple[str, str | None]:
        """(prompt, None) for an inline query that may go ahead, else ("", the hint to show instead).

        The chats' refusals (too long, rate limited, no live workers), worded for inline mode's short hints.
        """
        prompt, refusal = self.prompt_or_refusal(raw, t)
        if refusal is not None:
            self._refused("inline", "too_long")
            return "", t.plural("INLINE_TOO_LONG", self.settings.prompt_max_chars, limit=self.settings.prompt_max_chars)
        decision = await self.inline_limiter.check(user_id)
        if not decision.allowed:
            self._refused("inline", "rate_limited")
            return "", t.INLINE_RATE_LIMITED.format(seconds=decision.retry_after_whole_s)
        if not await self._workers_alive():
            self._refused("inline", "workers_down")
            return "", t.INLINE_WORKERS_DOWN
        return prompt, None

    async def inline_variants(self, query_id: str, user_id: int, prompt: str,
                              update_id: int | None = None) -> list[JokeResult]:
        """Generate a few variants at high priority; return those finished within inline_wait_s.

        Raises QueueFull when none could be queued.
        """
        received_at = time.time()
        wait_s = self.settings.inline_wait_s
        delivery = Delivery(inline_query_id=query_id)
        requests = [self._request("inline", delivery, user_id, prompt, received_at=received_at,
                                  timeout_s=wait_s + 1.0)
                    for _ in range(self.settings.inline_variants)]
        futures = [self.waiters.expect(request.request_id) for request in requests]
        try:
            submitted = 0
            for request in requests:
                try:
                    await self.queue.submit(request)
                except QueueFull:
                    if not submitted:
                        self._refused("inline", "busy")
                        raise
                    break
                submitted += 1
                self._accepted(request, update_id)
            await self.feedback.count_request()
            await self.user_stats.count_joke(user_id, prompt)  # one query, one joke, however many variants
            await asyncio.wait(futures[:submitted], timeout=wait_s)
        finally:
            for request in requests:
                self.waiters.discard(request.request_id)
        ready: list[JokeResult] = []
        for request, future in zip(requests[:submitted], futures):
            result = future.result() if future.done() else None
            text = clean_model_text(result.text) if result is not None else ""
            outcome = "late" if result is None else "empty" if result.status == "ok" and not text else result.status
            report_shown(self.metrics, request.request_id, request.kind, result.size if result is not None else None,
                         result.status if result is not None else None, outcome, time.time() - received_at)
            if outcome == "ok":
                ready.append(result.model_copy(update={"text": text}))
        for result in ready:
            await self.feedback.remember_joke(result.request_id, prompt, result.size or "?", result.latency_s)
        return ready

    async def joke_in_inline_message(self, inline_message_id: str, user_id: int, prompt: str, t: Texts,
                                     kind: str = "inline_chosen", *, show_placeholder: bool = False,
                                     update_id: int | None = None) -> None:
        """Write a joke into a message sent via inline mode, editing it as the text grows."""
        received_at = time.time()
        delivery = Delivery(inline_message_id=inline_message_id)
        if not await self._workers_alive():
            self._refused(kind, "workers_down")
            await self.outbox.show(delivery, t.WORKERS_DOWN)
            await self.outstanding.settle_update(update_id)
            return
        if show_placeholder:
            await self.outbox.show(delivery, t.PLACEHOLDER)
        # High priority: someone is looking at a placeholder in a chat with other people.
        request = self._request(kind, delivery, user_id, prompt, received_at=received_at, priority="high",
                                stream_partials=True)
        await self._submit_tracked(request, update_id, t)

    async def write_in_inline_message(self, inline_message_id: str, user_id: int, prompt: str, t: Texts, *,
                                      retry_markup: InlineKeyboardMarkup | None = None,
                                      update_id: int | None = None) -> str | None:
        """The ✍️ article was sent (chosen_inline_result) or its button pressed: write the joke into it, once
        (both may come). It costs a joke of the user's budget like /joke; refused, a refusal to show, and
        a later press may try again. With `retry_markup`, the refusal is also written into the message."""
        if not await self.outstanding.claim_inline_message(inline_message_id):
            return None  # the other of the two started it
        decision = await self.limiter.check(user_id)
        if not decision.allowed:
            self._refused("inline_chosen", "rate_limited")
            await self.outstanding.release_inline_message(inline_message_id)
            await self.outstanding.settle_update(update_id)
            refusal = t.RATE_LIMITED.format(seconds=decision.retry_after_whole_s)
            if retry_markup is not None:
                await self.outbox.show(Delivery(inline_message_id=inline_message_id), refusal, retry_markup)
            return refusal
        await self.joke_in_inline_message(inline_message_id, user_id, prompt, t, update_id=update_id)
        return None

    async def more_in_inline_message(self, inline_message_id: str, user_id: int, prompt: str, t: Texts,
                                     update_id: int | None = None) -> str | None:
        """🔁 Ещё under an inline message: a refusal to show as a callback answer, or None."""
        if not await self._first_delivery(update_id, "more"):
            return None
        decision = await self.limiter.check(user_id)
        if not decision.allowed:
            self._refused("more", "rate_limited")
            await self.outstanding.settle_update(update_id)
            return t.RATE_LIMITED.format(seconds=decision.retry_after_whole_s)
        await self.joke_in_inline_message(inline_message_id, user_id, prompt, t, "more", show_placeholder=True,
                                          update_id=update_id)
        return None
