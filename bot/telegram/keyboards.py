"""Inline keyboards and their callback data: signed for the place they are shown (bot/telegram/signing.py)
and kept under Telegram's 64-byte callback_data limit."""
from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from aiogram.filters import BaseFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup
from pydantic import Field

from bot.queue.protocol import Delivery
from bot.telegram.chat_settings import FIELDS, ChatSettings
from bot.telegram.signing import INLINE_SCOPE, Signer, chat_scope
from bot.telegram.texts import Texts

# Request ids (uuid4().hex) and inline prompt tokens: anything else in a button is refused before Redis sees it.
_JOKE_ID = r"^[0-9a-f]{32}$"
_TOKEN = r"^[0-9a-f]{16}$"


class JokeAction(CallbackData, prefix="j"):
    """A button under a joke; joke_id is the request_id that produced it."""

    action: Literal["more", "up", "down"]
    joke_id: str = Field(pattern=_JOKE_ID)


class ChatSetting(CallbackData, prefix="cs"):
    """A /settings button: set `field` to `value` in chat `chat_id` (a press from another chat is refused).

    The longest, a supergroup's id with "creativity", is under 40 bytes of Telegram's 64.
    """

    chat_id: int
    field: Literal[FIELDS]
    value: str


class WriteInline(CallbackData, prefix="w"):
    """The button of an inline "✍️ Написать анекдот" message; token finds the prompt in Redis."""

    token: str = Field(pattern=_TOKEN)


def button_scope(callback: CallbackQuery) -> str | None:
    """Where the pressed button was: the scope its data must be signed for."""
    if callback.inline_message_id is not None:
        return INLINE_SCOPE
    if callback.message is not None:
        return chat_scope(callback.message.chat.id)
    return None


def delivery_scope(delivery: Delivery) -> str:
    """The scope of buttons put on the message a `Delivery` points to."""
    return INLINE_SCOPE if delivery.inline_message_id is not None else chat_scope(delivery.chat_id)


class SignedButton(BaseFilter):
    """A press of a `kind` button the bot signed for the place it was pressed; hands the handler
    `callback_data`. Everything else (forged, copied, old unsigned, malformed) is left to the fallback."""

    def __init__(self, kind: type[CallbackData], actions: Collection[str] | None = None) -> None:
        self.kind = kind
        self.actions = actions

    async def __call__(self, callback: CallbackQuery, signer: Signer) -> bool | dict[str, Any]:
        body = signer.verified(callback.data or "", button_scope(callback))
        if body is None:
            return False
        try:
            data = self.kind.unpack(body)
        except (TypeError, ValueError):  # another kind's data, or fields that fail their patterns
            return False
        if self.actions is not None and getattr(data, "action", None) not in self.actions:
            return False
        return {"callback_data": data}


def joke_id_of(callback_data: str) -> str:
    """The joke id in a joke button's data (for tests and tools; the bot itself checks the MAC first)."""
    return JokeAction.unpack(callback_data.rpartition(":")[0]).joke_id


def joke_keyboard(joke_id: str, signer: Signer, scope: str, t: Texts, *, more: bool = True) -> InlineKeyboardMarkup:
    def button(text: str, action: str) -> InlineKeyboardButton:
        data = signer.sign(JokeAction(action=action, joke_id=joke_id).pack(), scope)
        return InlineKeyboardButton(text=text, callback_data=data)

    votes = [button(t.BUTTON_UP, "up"), button(t.BUTTON_DOWN, "down")]
    return InlineKeyboardMarkup(inline_keyboard=[[button(t.BUTTON_MORE, "more"), *votes] if more else votes])


def write_keyboard(token: str, signer: Signer, t: Texts) -> InlineKeyboardMarkup:
    # An inline result needs a keyboard for Telegram to hand us an inline_message_id we can edit later.
    data = signer.sign(WriteInline(token=token).pack(), INLINE_SCOPE)
    return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text=t.BUTTON_WRITE, callback_data=data)]])


def settings_keyboard(chat_id: int, current: ChatSettings, offered: dict[str, tuple[str, ...]],
                      signer: Signer, t: Texts) -> InlineKeyboardMarkup:
    """One row per setting in `offered` (field -> its values); the current value is ticked. Signed for
    the chat, so a copy pressed elsewhere is refused."""
    def button(field: str, value: str) -> InlineKeyboardButton:
        label = t.setting_value(field, value)
        tick = t.SETTING_CURRENT if getattr(current, field) == value else ""
        data = signer.sign(ChatSetting(chat_id=chat_id, field=field, value=value).pack(), chat_scope(chat_id))
        return InlineKeyboardButton(text=tick + label, callback_data=data)

    return InlineKeyboardMarkup(inline_keyboard=[[button(field, value) for value in values]
                                                 for field, values in offered.items() if values])


class BroadcastAction(CallbackData, prefix="bc"):
    """A button under a /broadcast confirmation (signed for the admin's chat; the press is checked for an admin)."""

    action: Literal["send", "cancel"]
    broadcast_id: str = Field(pattern=_TOKEN)


def broadcast_keyboard(broadcast_id: str, signer: Signer, scope: str, t: Texts, *,
                       sending: bool = False) -> InlineKeyboardMarkup:
    """Send and Cancel; while it is sending, Cancel alone."""
    def button(text: str, action: str) -> InlineKeyboardButton:
        data = signer.sign(BroadcastAction(action=action, broadcast_id=broadcast_id).pack(), scope)
        return InlineKeyboardButton(text=text, callback_data=data)

    cancel = button(t.BUTTON_BROADCAST_CANCEL, "cancel")
    row = [cancel] if sending else [button(t.BUTTON_BROADCAST_SEND, "send"), cancel]
    return InlineKeyboardMarkup(inline_keyboard=[row])
