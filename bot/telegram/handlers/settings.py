"""/settings: this chat's joke length, creativity and (where CHAT_SIZES offers any) model size, set by buttons.

Anyone may open the keyboard; a press is what is checked. In groups only the chat's admins may change a
setting (bot/telegram/chat_settings.py). A button whose payload names another chat, an unknown setting or
a value this deployment does not offer is refused with a message in Russian, and nothing changes.
Every press is logged with who, where, what and the outcome.
"""
from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.common.logs import log_event
from bot.common.settings import Settings
from bot.telegram.chat_settings import FIELDS, ChatSettings, ChatSettingsStore, allowed_values
from bot.telegram.keyboards import ChatSetting, SignedButton, settings_keyboard
from bot.telegram.outbox import is_not_modified
from bot.telegram.signing import Signer
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)
router = Router(name="settings")


def _offered(settings: Settings) -> dict[str, tuple[str, ...]]:
    return {field: allowed_values(field, settings) for field in FIELDS}


def settings_text(current: ChatSettings, settings: Settings, private: bool, t: Texts) -> str:
    text = t.SETTINGS.format(length=t.setting_value("length", current.length).lower(),
                             creativity=t.setting_value("creativity", current.creativity).lower())
    if settings.chat_sizes:
        text += t.SETTINGS_SIZE_LINE.format(size=t.setting_value("size", current.size).lower())
    return text + (t.SETTINGS_HOW_PRIVATE if private else t.SETTINGS_HOW_GROUP)


@router.message(Command("settings"))
async def show(message: Message, settings: Settings, chat_settings: ChatSettingsStore, signer: Signer,
               t: Texts) -> None:
    current = await chat_settings.get(message.chat.id)
    await message.reply(settings_text(current, settings, message.chat.type == "private", t),
                        reply_markup=settings_keyboard(message.chat.id, current, _offered(settings), signer, t))


def _audit(callback: CallbackQuery, field: str, value: str, outcome: str) -> None:
    chat_id = callback.message.chat.id if callback.message is not None else None
    log_event(log, "chat setting", {"user_id": callback.from_user.id, "chat_id": chat_id, "field": field,
                                    "value": value[:32], "outcome": outcome}, quote=True)


@router.callback_query(SignedButton(ChatSetting))
async def change(callback: CallbackQuery, callback_data: ChatSetting, bot: Bot, settings: Settings,
                 chat_settings: ChatSettingsStore, signer: Signer, t: Texts) -> None:
    field, value, message = callback_data.field, callback_data.value, callback.message
    if message is None:  # pressed in an inline message: no chat of ours to set anything for
        _audit(callback, field, value, "refused: no chat")
        await callback.answer(t.SETTINGS_BAD_BUTTON, show_alert=True)
        return
    if callback_data.chat_id != message.chat.id:
        _audit(callback, field, value, f"refused: payload names chat {callback_data.chat_id}")
        await callback.answer(t.SETTINGS_OTHER_CHAT, show_alert=True)
        return
    if value not in allowed_values(field, settings):
        _audit(callback, field, value, "refused: not offered")
        await callback.answer(t.SETTINGS_NOT_OFFERED, show_alert=True)
        return
    allowed = await chat_settings.may_change(bot, message.chat.id, message.chat.type, callback.from_user.id)
    if not allowed:
        _audit(callback, field, value, "refused: not a chat admin" if allowed is False else "refused: admin unknown")
        await callback.answer(t.SETTINGS_ADMINS_ONLY if allowed is False else t.SETTINGS_ADMIN_UNKNOWN,
                              show_alert=True)
        return
    current = await chat_settings.set(message.chat.id, field, value)
    _audit(callback, field, value, "changed")
    await callback.answer(t.SETTINGS_CHANGED.format(setting=t.setting_name(field), value=t.setting_value(field, value)))
    try:  # the keyboard's ticks follow the change
        await bot.edit_message_text(text=settings_text(current, settings, message.chat.type == "private", t),
                                    chat_id=message.chat.id, message_id=message.message_id,
                                    reply_markup=settings_keyboard(message.chat.id, current, _offered(settings),
                                                                   signer, t))
    except TelegramAPIError as error:  # unchanged (a second press), too old or deleted: the setting stands
        if not is_not_modified(error):
            log.info("settings message %s in chat %s not updated: %s", message.message_id, message.chat.id, error)


@router.callback_query(F.data.startswith(ChatSetting.__prefix__ + ChatSetting.__separator__))
async def bad_button(callback: CallbackQuery, t: Texts) -> None:
    """A settings payload that is not the bot's own signed one for this chat (forged, copied from another chat,
    truncated, from an older bot): said, never a crash."""
    log_event(log, "chat setting", {"user_id": callback.from_user.id, "data": (callback.data or "")[:64],
                                    "outcome": "refused: bad payload"}, quote=True)
    await callback.answer(t.SETTINGS_BAD_BUTTON, show_alert=True)
