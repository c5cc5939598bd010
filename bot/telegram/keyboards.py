"""Inline keyboards and their callback data (kept under Telegram's 64-byte callback_data limit)."""
from __future__ import annotations

from typing import Literal

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.telegram import texts
from bot.telegram.chat_settings import FIELDS, ChatSettings


class JokeAction(CallbackData, prefix="j"):
    """A button under a joke; joke_id is the request_id that produced it (32 hex characters)."""

    action: Literal["more", "up", "down"]
    joke_id: str


class ChatSetting(CallbackData, prefix="cs"):
    """A /settings button: set `field` to `value` in chat `chat_id` (a press from another chat is refused).

    The longest, a supergroup's id with "creativity", is under 40 bytes of Telegram's 64.
    """

    chat_id: int
    field: Literal[FIELDS]
    value: str


class WriteInline(CallbackData, prefix="w"):
    """The button of an inline "✍️ Написать анекдот" message; token finds the prompt in Redis."""

    token: str


def joke_keyboard(joke_id: str) -> InlineKeyboardMarkup:
    def button(text: str, action: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(text=text, callback_data=JokeAction(action=action, joke_id=joke_id).pack())

    return InlineKeyboardMarkup(inline_keyboard=[[
        button(texts.BUTTON_MORE, "more"), button(texts.BUTTON_UP, "up"), button(texts.BUTTON_DOWN, "down"),
    ]])


def write_keyboard(token: str) -> InlineKeyboardMarkup:
    # An inline result needs a keyboard for Telegram to hand us an inline_message_id we can edit later.
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=texts.BUTTON_WRITE, callback_data=WriteInline(token=token).pack()),
    ]])


def settings_keyboard(chat_id: int, current: ChatSettings, offered: dict[str, tuple[str, ...]]) -> InlineKeyboardMarkup:
    """One row per setting in `offered` (field -> its values); the current value is ticked."""
    def button(field: str, value: str) -> InlineKeyboardButton:
        label = texts.SETTING_VALUES[field].get(value, value)
        tick = texts.SETTING_CURRENT if getattr(current, field) == value else ""
        return InlineKeyboardButton(text=tick + label,
                                    callback_data=ChatSetting(chat_id=chat_id, field=field, value=value).pack())

    return InlineKeyboardMarkup(inline_keyboard=[[button(field, value) for value in values]
                                                 for field, values in offered.items() if values])
