"""Outgoing-request middlewares on the Bot's session: every Bot API call of every handler passes here.

`FloodControl` waits out Telegram's 429 (TelegramRetryAfter) and retries, never sooner than told; it
retries a 5xx or a failed connection (reset, timeout) a few times with a short backoff (a sendMessage only
after a 5xx: one whose connection failed may have been delivered); it counts every
failed call (telegram_errors) and every 429 (telegram_retry_afters). Longer outages are the callers'
(the delivery keeps trying for DELIVERY_RETRY_S).
`GroupPacing` spends the bot's global message budget (MESSAGES_PER_SECOND) before every message and edit,
and a group chat's (GROUP_MESSAGES_PER_MINUTE) before each one sent there; channels count as groups.
`InFlightUpdates` (an update middleware of the Dispatcher) lets shutdown wait for the updates in hand.
`UserLanguage` (another) hands every handler `t`, the texts in the language of whoever sent the update.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Iterator

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import (
    AnswerInlineQuery,
    EditMessageReplyMarkup,
    EditMessageText,
    GetMe,
    GetUpdates,
    SendChatAction,
    SendMessage,
    SendMessageDraft,
    SendPhoto,
    SendSticker,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType
from redis.exceptions import RedisError

from bot.common.logs import Sparse
from bot.common.metrics import Metrics
from bot.telegram import texts
from bot.telegram.ratelimit import ChatPacer, is_group_chat

log = logging.getLogger(__name__)

# Not worth waiting for: an inline answer after ~10 s is dropped by Telegram anyway, a draft or a
# chat action is stale by the time a retry would land. Their callers treat the error as "skip".
_NOT_RETRIED = (AnswerInlineQuery, SendMessageDraft, SendChatAction)
# A 5xx or a dropped connection is worth a quick retry, except for these: aiogram's polling has its own backoff,
# and getMe is the delivery's probe of whether Telegram answers in time again (its callers loop themselves).
_NOT_RETRIED_TRANSIENT = (*_NOT_RETRIED, GetUpdates, GetMe)
_TRANSIENT = (TelegramServerError, TelegramNetworkError)
_PACED = (SendMessage, EditMessageText, EditMessageReplyMarkup, SendPhoto, SendSticker)
# aiogram's exceptions carry no status code; most specific class first.
_ERROR_CODES: tuple[tuple[type[TelegramAPIError], str], ...] = (
    (TelegramRetryAfter, "429"), (TelegramEntityTooLarge, "413"), (TelegramNetworkError, "network"),
    (TelegramBadRequest, "400"), (TelegramUnauthorizedError, "401"), (TelegramForbiddenError, "403"),
    (TelegramNotFound, "404"), (TelegramConflictError, "409"), (TelegramServerError, "5xx"),
)


def error_code(error: TelegramAPIError) -> str:
    return next((code for kind, code in _ERROR_CODES if isinstance(error, kind)), "other")


def api_method_name(method: TelegramMethod[Any]) -> str:
    """The Bot API's name of a call ("sendMessage"), as Telegram's docs and the metrics spell it."""
    return getattr(method, "__api_method__", type(method).__name__)


class FloodControl(BaseRequestMiddleware):
    def __init__(self, metrics: Metrics, max_attempts: int = 4, max_retry_after_s: float = 60.0,
                 transient_attempts: int = 3, backoff_s: float = 0.5) -> None:
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.max_retry_after_s = max_retry_after_s  # a longer ban is better reported than slept through
        self.transient_attempts = transient_attempts
        self.backoff_s = backoff_s

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        attempt = 1
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                self.metrics.telegram_error(api_method_name(method), error_code(error))
                self.metrics.telegram_retry_after(api_method_name(method))
                give_up = (isinstance(method, _NOT_RETRIED) or attempt >= self.max_attempts
                           or error.retry_after > self.max_retry_after_s)
                log.warning("flood control on %s: retry after %ss (attempt %d)%s", type(method).__name__,
                            error.retry_after, attempt, "; giving up" if give_up else "")
                if give_up:
                    raise
                await asyncio.sleep(error.retry_after)
                attempt += 1
            except _TRANSIENT as error:
                self.metrics.telegram_error(api_method_name(method), error_code(error))
                # A send whose connection failed may have been delivered: whether to send again is the caller's call.
                maybe_sent = isinstance(error, TelegramNetworkError) and isinstance(method, SendMessage)
                if maybe_sent or isinstance(method, _NOT_RETRIED_TRANSIENT) or attempt >= self.transient_attempts:
                    raise
                log.warning("%s failed (%s); retrying (attempt %d)", type(method).__name__, error, attempt)
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                attempt += 1
            except TelegramAPIError as error:
                self.metrics.telegram_error(api_method_name(method), error_code(error))
                raise


# Set around a call that may be skipped (a joke's progress edit): paced, it takes a slot only when one is
# free now and another would be left, so that the placeholders and finished jokes behind it never wait for it.
_BEST_EFFORT: ContextVar[bool] = ContextVar("best_effort", default=False)


class TurnSkipped(Exception):
    """A best-effort call was not made: its chat's (or the bot's) message budget is kept for the others."""


@contextmanager
def best_effort() -> Iterator[None]:
    token = _BEST_EFFORT.set(True)
    try:
        yield
    finally:
        _BEST_EFFORT.reset(token)


class GroupPacing(BaseRequestMiddleware):
    def __init__(self, pacer: ChatPacer, everywhere: ChatPacer | None = None) -> None:
        self.pacer = pacer
        self.everywhere = everywhere
        self._unpaced = Sparse(log)

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        chat_id: Any = getattr(method, "chat_id", None)
        in_group = isinstance(chat_id, int) and is_group_chat(chat_id)
        try:
            if isinstance(method, _PACED) and _BEST_EFFORT.get():
                # The chat's budget first: the scarcer one (a refusal there takes nothing from the bot's).
                if not ((not in_group or await self.pacer.try_turn(chat_id))
                        and (self.everywhere is None or await self.everywhere.try_turn(0))):
                    raise TurnSkipped(f"{type(method).__name__} in chat {chat_id}")
            elif isinstance(method, _PACED):
                if self.everywhere is not None:
                    waited = await self.everywhere.wait_turn(0)
                    if waited > 0:
                        log.info("paced %s by %.1fs: the bot's messages per second", type(method).__name__, waited)
                if in_group:
                    waited = await self.pacer.wait_turn(chat_id)
                    if waited > 0:
                        log.info("paced %s in chat %s by %.1fs", type(method).__name__, chat_id, waited)
        except RedisError as error:
            # The budgets live in Redis: while it is away, send unpaced (Telegram's 429s still pace us)
            # rather than let an apology for that very outage fail too.
            self._unpaced.warning("pacing skipped for %s, Redis unavailable: %s", type(method).__name__, error)
        return await make_request(bot, method)


class InFlightUpdates:
    """An outer update middleware that remembers which tasks are handling updates, so that shutdown can
    let them finish (`drain`) after the bot stopped taking new ones."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, handler: Callable[[Any, dict[str, Any]], Awaitable[Any]], event: Any,
                       data: dict[str, Any]) -> Any:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await handler(event, data)
        finally:
            self._tasks.discard(task)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Until every update in hand is handled; cancelled (a stage timeout), cancels those handlers too."""
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class UserLanguage:
    """An outer update middleware: `t` for the handlers, the texts in the sender's language (bot/telegram/texts.py).
    Updates without a user (channel posts) get the default language."""

    async def __call__(self, handler: Callable[[Any, dict[str, Any]], Awaitable[Any]], event: Any,
                       data: dict[str, Any]) -> Any:
        user = data.get("event_from_user")
        data["t"] = texts.for_user(user.language_code if user is not None else None)
        return await handler(event, data)
