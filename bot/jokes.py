"""Starting a joke: the steps every entry point shares (commands, plain text, 🔁 Ещё, inline).

validate the prompt → rate-limit the user → show activity → check for live workers → remember the
request → submit it. Every refusal is said to the user at once, in Russian; the answer itself
arrives later through `DeliveryLoop`.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from bot import texts
from bot.delivery import InlineWaiters
from bot.feedback import FeedbackStore
from bot.outbox import Outbox
from bot.outstanding import OutstandingRequests
from bot.prompts import PromptTooLong, clean_model_text, clean_prompt, random_opening
from bot.protocol import Delivery, JokeRequest, JokeResult
from bot.queue import QueueFull, RequestQueue
from bot.ratelimit import Decision, UserRateLimiter
from bot.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatOrigin:
    """Who asked for a joke, and where."""

    chat_id: int
    user_id: int
    private: bool
    reply_to_message_id: int | None = None


class JokeService:
    def __init__(self, settings: Settings, queue: RequestQueue, outstanding: OutstandingRequests,
                 limiter: UserRateLimiter, inline_limiter: UserRateLimiter, feedback: FeedbackStore,
                 outbox: Outbox, waiters: InlineWaiters) -> None:
        self.settings = settings
        self.queue = queue
        self.outstanding = outstanding
        self.limiter = limiter
        self.inline_limiter = inline_limiter
        self.feedback = feedback
        self.outbox = outbox
        self.waiters = waiters

    def prompt_or_refusal(self, raw: str | None, *, truncate: bool = False) -> tuple[str, str | None]:
        """(prompt, None), or ("", a message saying why not). An empty prompt becomes a classic opening."""
        try:
            prompt = clean_prompt(raw, self.settings.prompt_max_chars, truncate=truncate)
        except PromptTooLong as error:
            return "", texts.PROMPT_TOO_LONG.format(length=error.length, limit=error.limit)
        return prompt or random_opening(), None

    def _request(self, kind: str, delivery: Delivery, user_id: int | None, prompt: str, *,
                 request_id: str | None = None, timeout_s: float | None = None, **fields) -> JokeRequest:
        timeout_s = timeout_s if timeout_s is not None else self.settings.request_timeout_s
        return JokeRequest(request_id=request_id or uuid.uuid4().hex, kind=kind, delivery=delivery, user_id=user_id,
                           prompt=prompt, sampling=self.settings.sampling_params(),
                           deadline=time.time() + timeout_s, **fields)

    async def _submit_tracked(self, request: JokeRequest) -> bool:
        """Remember, then submit; on a full queue tell the user "busy" right away."""
        await self.outstanding.track(request, give_up_at=request.deadline + self.settings.result_grace_s)
        try:
            await self.queue.submit(request)
        except QueueFull as error:
            log.warning("refused %s: %s", request.request_id, error)
            await self.outstanding.forget(request.request_id)
            await self.outbox.show(request.delivery, texts.BUSY)
            return False
        except BaseException:
            # Not queued (Redis down, cancelled): the error handler speaks; no timeout apology later.
            await asyncio.shield(self.outstanding.forget(request.request_id))
            raise
        await self.feedback.count_request()
        return True

    async def _workers_alive(self) -> bool:
        return bool(await self.queue.live_workers())

    # -- chats ---------------------------------------------------------------------------------------

    async def joke_in_chat(self, origin: ChatOrigin, raw_prompt: str | None, kind: str = "command",
                           *, truncate: bool = False) -> None:
        prompt, refusal = self.prompt_or_refusal(raw_prompt, truncate=truncate)
        if refusal is None:
            decision = await self.limiter.check(origin.user_id)
            if not decision.allowed:
                refusal = texts.RATE_LIMITED.format(seconds=decision.retry_after_whole_s)
        if refusal is not None:
            await self.outbox.send(origin.chat_id, refusal, origin.reply_to_message_id)
            return
        await self.outbox.typing(origin.chat_id)
        if not await self._workers_alive():
            # Said now rather than queued: the user hears within seconds, and no stale joke turns up later.
            await self.outbox.send(origin.chat_id, texts.WORKERS_DOWN, origin.reply_to_message_id)
            return
        request_id = uuid.uuid4().hex
        delivery = Delivery(chat_id=origin.chat_id, reply_to_message_id=origin.reply_to_message_id)
        # Private chats stream into a message draft (empty text shows "Thinking…"); elsewhere, or
        # where drafts fail, a placeholder message is edited instead. Groups get no streamed edits:
        # their budget is ~20 messages a minute.
        if not (origin.private and await self.outbox.draft(origin.chat_id, request_id, "")):
            placeholder = await self.outbox.send(origin.chat_id, texts.PLACEHOLDER, origin.reply_to_message_id)
            delivery = delivery.model_copy(update={"message_id": placeholder.message_id})
        request = self._request(kind, delivery, origin.user_id, prompt, request_id=request_id,
                                stream_partials=origin.private)
        await self._submit_tracked(request)

    # -- inline --------------------------------------------------------------------------------------

    async def check_inline_user(self, user_id: int) -> Decision:
        return await self.inline_limiter.check(user_id)

    async def workers_alive(self) -> bool:
        return await self._workers_alive()

    async def inline_variants(self, query_id: str, user_id: int, prompt: str) -> list[JokeResult]:
        """Generate a few variants at high priority; return those finished within inline_wait_s.

        Raises QueueFull when none could be queued.
        """
        wait_s = self.settings.inline_wait_s
        delivery = Delivery(inline_query_id=query_id)
        requests = [self._request("inline", delivery, user_id, prompt, timeout_s=wait_s + 1.0)
                    for _ in range(self.settings.inline_variants)]
        futures = [self.waiters.expect(request.request_id) for request in requests]
        try:
            submitted = 0
            for request in requests:
                try:
                    await self.queue.submit(request)
                    submitted += 1
                except QueueFull:
                    if not submitted:
                        raise
                    break
            await self.feedback.count_request()
            await asyncio.wait(futures[:submitted], timeout=wait_s)
        finally:
            for request in requests:
                self.waiters.discard(request.request_id)
        ready = [f.result().model_copy(update={"text": clean_model_text(f.result().text)}) for f in futures
                 if f.done() and f.result().status == "ok"]
        ready = [result for result in ready if result.text]
        for result in ready:
            await self.feedback.remember_joke(result.request_id, prompt, result.size or "?", result.latency_s)
        return ready

    async def joke_in_inline_message(self, inline_message_id: str, user_id: int, prompt: str,
                                     kind: str = "inline_chosen", *, show_placeholder: bool = False) -> None:
        """Write a joke into a message sent via inline mode, editing it as the text grows."""
        delivery = Delivery(inline_message_id=inline_message_id)
        if not await self._workers_alive():
            await self.outbox.show(delivery, texts.WORKERS_DOWN)
            return
        if show_placeholder:
            await self.outbox.show(delivery, texts.PLACEHOLDER)
        # High priority: someone is looking at a placeholder in a chat with other people.
        request = self._request(kind, delivery, user_id, prompt, priority="high", stream_partials=True)
        await self._submit_tracked(request)

    async def more_in_inline_message(self, inline_message_id: str, user_id: int, prompt: str) -> str | None:
        """🔁 Ещё under an inline message: a refusal to show as a callback answer, or None."""
        decision = await self.limiter.check(user_id)
        if not decision.allowed:
            return texts.RATE_LIMITED.format(seconds=decision.retry_after_whole_s)
        await self.joke_in_inline_message(inline_message_id, user_id, prompt, "more", show_placeholder=True)
        return None
