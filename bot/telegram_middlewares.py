"""Outgoing-request middlewares on the Bot's session: every Bot API call of every handler passes here.

`FloodControl` waits out Telegram's 429 (TelegramRetryAfter) and retries, never sooner than told.
`GroupPacing` spends a group chat's message budget before each message the bot sends there.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import (
    AnswerInlineQuery,
    EditMessageReplyMarkup,
    EditMessageText,
    SendChatAction,
    SendMessage,
    SendMessageDraft,
    SendPhoto,
    SendSticker,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType

from bot.ratelimit import ChatPacer, is_group_chat

log = logging.getLogger(__name__)

# Not worth waiting for: an inline answer after ~10 s is dropped by Telegram anyway, a draft or a
# chat action is stale by the time a retry would land. Their callers treat the error as "skip".
_NOT_RETRIED = (AnswerInlineQuery, SendMessageDraft, SendChatAction)
_PACED = (SendMessage, EditMessageText, EditMessageReplyMarkup, SendPhoto, SendSticker)


class FloodControl(BaseRequestMiddleware):
    def __init__(self, max_attempts: int = 4, max_retry_after_s: float = 60.0) -> None:
        self.max_attempts = max_attempts
        self.max_retry_after_s = max_retry_after_s  # a longer ban is better reported than slept through

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        attempt = 1
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                give_up = (isinstance(method, _NOT_RETRIED) or attempt >= self.max_attempts
                           or error.retry_after > self.max_retry_after_s)
                log.warning("flood control on %s: retry after %ss (attempt %d)%s", type(method).__name__,
                            error.retry_after, attempt, "; giving up" if give_up else "")
                if give_up:
                    raise
                await asyncio.sleep(error.retry_after)
                attempt += 1


class GroupPacing(BaseRequestMiddleware):
    def __init__(self, pacer: ChatPacer) -> None:
        self.pacer = pacer

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        chat_id: Any = getattr(method, "chat_id", None)
        if isinstance(method, _PACED) and isinstance(chat_id, int) and is_group_chat(chat_id):
            waited = await self.pacer.wait_turn(chat_id)
            if waited > 0:
                log.info("paced %s in chat %s by %.1fs", type(method).__name__, chat_id, waited)
        return await make_request(bot, method)
