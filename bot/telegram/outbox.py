"""Putting text in front of the user wherever a `Delivery` points, tolerating Telegram's quirks.

Text always goes out plain (no parse_mode): jokes are model output and prompts are user input, and
neither may be parsed as markup. 429s are waited out by the session's FloodControl middleware.
"""
from __future__ import annotations

import logging
import math

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter
from aiogram.types import InlineKeyboardMarkup, Message, ReplyParameters

from bot.queue.protocol import Delivery

log = logging.getLogger(__name__)

MAX_MESSAGE_UTF16 = 4096  # Telegram counts message length in UTF-16 code units
# A send whose answer is late may have been made, and giving up on it means sending it again: a second copy. So a
# send waits this many times TELEGRAM_TIMEOUT_S for its answer; an edit or a probe, safe to repeat, waits once.
SEND_PATIENCE = 2.0


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit_message(text: str, limit: int = MAX_MESSAGE_UTF16) -> str:
    """Cut text to Telegram's message limit (in UTF-16 units), ending with "…" when cut."""
    text = text.strip()
    if utf16_len(text) <= limit:
        return text
    cut = text.encode("utf-16-le", "surrogatepass")[: (limit - 1) * 2].decode("utf-16-le", errors="ignore")
    return cut.rstrip() + "…"


def draft_id_for(request_id: str) -> int:
    """A stable, non-zero 31-bit draft id per request: one animated draft per joke."""
    return (int(request_id[:8], 16) & 0x7FFFFFFF) or 1


def is_not_modified(error: TelegramBadRequest) -> bool:
    return "message is not modified" in str(error).lower()


def _is_gone(error: TelegramBadRequest) -> bool:
    message = str(error).lower()
    return "message to edit not found" in message or "message can't be edited" in message


class Outbox:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.send_timeout_s = math.ceil(bot.session.timeout * SEND_PATIENCE)

    async def send(self, chat_id: int, text: str, reply_to_message_id: int | None = None,
                   reply_markup: InlineKeyboardMarkup | None = None, *, thread_id: int | None = None) -> Message:
        """`thread_id`: the forum topic to post in. A reply that may go without its message (deleted) would
        otherwise land in the group's General topic."""
        reply = (ReplyParameters(message_id=reply_to_message_id, allow_sending_without_reply=True)
                 if reply_to_message_id else None)
        return await self.bot.send_message(chat_id, fit_message(text), message_thread_id=thread_id,
                                           reply_parameters=reply, reply_markup=reply_markup,
                                           request_timeout=self.send_timeout_s)

    async def show(self, delivery: Delivery, text: str, reply_markup: InlineKeyboardMarkup | None = None) -> int | None:
        """Edit the placeholder or inline message, or send a new reply when there is none.

        Returns the id of a newly sent message (the caller may remember it), else None.
        "Message is not modified" counts as success; a placeholder the user deleted is replaced
        by a new message.
        """
        text = fit_message(text)
        try:
            if delivery.inline_message_id is not None:
                await self.bot.edit_message_text(text=text, inline_message_id=delivery.inline_message_id,
                                                 reply_markup=reply_markup)
                return None
            if delivery.chat_id is None:
                raise ValueError(f"nothing to show an answer in: {delivery}")
            if delivery.message_id is not None:
                await self.bot.edit_message_text(text=text, chat_id=delivery.chat_id,
                                                 message_id=delivery.message_id, reply_markup=reply_markup)
                return None
        except TelegramBadRequest as error:
            if is_not_modified(error):
                return None
            if not (_is_gone(error) and delivery.chat_id is not None):
                raise
            log.info("placeholder %s in chat %s is gone; sending a new message", delivery.message_id, delivery.chat_id)
        message = await self.send(delivery.chat_id, text, delivery.reply_to_message_id, reply_markup,
                                  thread_id=delivery.message_thread_id)
        return message.message_id

    async def draft(self, chat_id: int, request_id: str, text: str, thread_id: int | None = None) -> bool:
        """Stream a partial text as a message draft (private chats, Bot API 9.3+), in the chat's topic where the
        user keeps topics with the bot.

        Returns False when drafts do not work here (the caller falls back to a message it edits).
        Raises TelegramRetryAfter, so the caller can pause drafts instead of hammering.
        """
        try:
            return bool(await self.bot.send_message_draft(chat_id=chat_id, draft_id=draft_id_for(request_id),
                                                          text=fit_message(text) if text else "",
                                                          message_thread_id=thread_id))
        except TelegramRetryAfter:
            raise
        except TelegramAPIError as error:
            log.info("drafts unavailable in chat %s (%s); falling back to edits", chat_id, error)
            return False

    async def typing(self, chat_id: int, thread_id: int | None = None) -> None:
        try:
            await self.bot.send_chat_action(chat_id, "typing", message_thread_id=thread_id)
        except TelegramAPIError as error:  # cosmetic: never worth failing a joke for
            log.debug("typing action failed in chat %s: %s", chat_id, error)
