"""The last router: hints for what no feature handles, and the error handler.

Private chats get a hint for unknown commands and non-text messages (stickers, photos, voice…).
In groups only commands explicitly addressed to us get a hint; commands for other bots and
everything else are ignored. A button press no feature took (forged, copied to another chat, or an
old unsigned button) is answered "button expired", so its spinner stops.
"""
from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, ErrorEvent, Message

from bot.common.logs import log_event
from bot.telegram import texts
from bot.telegram.handlers.inline import answer_hint
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)
router = Router(name="fallback")


def _mention(text: str) -> str | None:
    command = text.split(maxsplit=1)[0]
    _, at, mention = command.partition("@")
    return mention if at else None


@router.message(F.text.startswith("/"))
async def unknown_command(message: Message, bot: Bot, t: Texts) -> None:
    mention = _mention(message.text)
    me = await bot.me()
    addressed_to_us = mention is not None and me.username is not None and mention.lower() == me.username.lower()
    if addressed_to_us or (mention is None and message.chat.type == "private"):
        await message.reply(t.UNKNOWN_COMMAND)


@router.message(F.chat.type == "private")
async def not_text(message: Message, t: Texts) -> None:
    await message.reply(t.NOT_TEXT)


@router.callback_query()
async def expired_button(callback: CallbackQuery, t: Texts) -> None:
    fields = {"user_id": callback.from_user.id, "data": (callback.data or "")[:80]}
    log_event(log, "button refused", fields, quote=True)
    await callback.answer(t.BUTTON_EXPIRED)


@router.errors()
async def on_error(event: ErrorEvent, bot: Bot, t: Texts = texts.RU) -> None:
    """A bug or an outage while handling an update: log it loudly, tell the user briefly."""
    log.error("update %s failed: %r", event.update.update_id, event.exception, exc_info=event.exception)
    update = event.update
    try:
        if update.message is not None:
            await update.message.reply(t.TEMPORARY_ERROR)  # a reply: in a busy group, to whom it is said
        elif update.callback_query is not None:
            await update.callback_query.answer(t.TEMPORARY_ERROR)
        elif update.inline_query is not None:  # rather than a spinner that ends in nothing
            await answer_hint(update.inline_query, t.INLINE_UNAVAILABLE)
        elif update.chosen_inline_result is not None and update.chosen_inline_result.inline_message_id:
            # The ✍️ article the user sent would say "writing…" forever.
            await bot.edit_message_text(t.TEMPORARY_ERROR,
                                        inline_message_id=update.chosen_inline_result.inline_message_id)
    except TelegramAPIError:
        pass
