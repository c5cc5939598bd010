"""Inline keyboards and their callback data (kept under Telegram's 64-byte callback_data limit)."""
from __future__ import annotations

from typing import Literal

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.telegram import texts


class JokeAction(CallbackData, prefix="j"):
    """A button under a joke; joke_id is the request_id that produced it (32 hex characters)."""

    action: Literal["more", "up", "down"]
    joke_id: str


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
