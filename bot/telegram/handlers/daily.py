"""/daily: subscribe this chat to a joke of the day (`/daily 09:00`, `/daily 09:00 Asia/Almaty`), stop it
(`/daily off`), or see what is set (`/daily`).

Works in private chats, in groups (only the chat's admins may change it, as with /settings) and in
channels the bot administers (a channel post comes from someone allowed to post there). The time zone
is the chat's: named once, it stays for later changes of the time; DAILY_TIMEZONE until then. The posts
themselves are made by bot/telegram/daily.py. Every change is logged with who, where and what.
"""
from __future__ import annotations

import logging
import time

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.common.logs import log_event
from bot.common.settings import Settings
from bot.telegram.chat_settings import ChatSettingsStore
from bot.telegram.daily import DailyJokes, Subscription, parse_time
from bot.telegram.jokes import topic_of
from bot.telegram.texts import Texts
from bot.telegram.timezones import parse_timezone, zone_label

log = logging.getLogger(__name__)
router = Router(name="daily")

OFF_WORDS = frozenset({"off", "stop", "выкл", "стоп", "нет"})
SHOWN_INPUT_CHARS = 40  # of a bad time or time zone, quoted back to the user


async def _may_change(message: Message, bot: Bot, chat_settings: ChatSettingsStore) -> bool | None:
    chat = message.chat
    if chat.type == "channel" or (message.sender_chat is not None and message.sender_chat.id == chat.id):
        return True  # a channel's post, or a group's anonymous admin
    if message.from_user is None:
        return False
    return await chat_settings.may_change(bot, chat.id, chat.type, message.from_user.id)


def _audit(message: Message, args: str, outcome: str) -> None:
    fields = {"user_id": message.from_user.id if message.from_user else None, "chat_id": message.chat.id,
              "args": args[:64], "outcome": outcome}
    log_event(log, "daily", fields, quote=True)


@router.message(Command("daily"))
@router.channel_post(Command("daily"))
async def daily(message: Message, command: CommandObject, bot: Bot, daily: DailyJokes,
                chat_settings: ChatSettingsStore, settings: Settings, t: Texts) -> None:
    args = (command.args or "").split()
    current = await daily.get(message.chat.id)
    if not args:
        if current is None:
            await message.reply(t.DAILY_STATUS_OFF.format(timezone=zone_label(settings.daily_timezone)))
        else:
            await message.reply(t.DAILY_STATUS_ON.format(at=current.at, timezone=zone_label(current.timezone)))
        return
    at = parse_time(args[0]) if args[0].lower() not in OFF_WORDS else None
    zone = " ".join(args[1:])  # a zone may be words: "New York", "Нижний Новгород"
    timezone = parse_timezone(zone) if zone else None
    if args[0].lower() not in OFF_WORDS:  # the input is checked before the rights: a typo is said at once
        if at is None:
            _audit(message, command.args or "", "refused: bad time")
            await message.reply(t.DAILY_BAD_TIME.format(value=" ".join(args)[:SHOWN_INPUT_CHARS]))
            return
        if zone and timezone is None:
            _audit(message, command.args or "", "refused: bad time zone")
            await message.reply(t.DAILY_BAD_TIMEZONE.format(value=zone[:SHOWN_INPUT_CHARS]))
            return
    allowed = await _may_change(message, bot, chat_settings)
    if not allowed:
        _audit(message, command.args or "", "refused: not a chat admin" if allowed is False else "refused: unknown")
        await message.reply(t.DAILY_ADMINS_ONLY if allowed is False else t.DAILY_ADMIN_UNKNOWN)
        return
    if at is None:  # off
        stopped = await daily.unsubscribe(message.chat.id)
        _audit(message, command.args or "", "unsubscribed" if stopped else "was not subscribed")
        await message.reply(t.DAILY_UNSUBSCRIBED if stopped else t.DAILY_NOT_SUBSCRIBED)
        return
    timezone = timezone or (current.timezone if current is not None else settings.daily_timezone)
    subscription = Subscription(chat_id=message.chat.id, at=f"{at:%H:%M}", timezone=timezone, language=t.language,
                                chat_type=message.chat.type, thread_id=topic_of(message),
                                by_user=message.from_user.id if message.from_user else None, since=time.time())
    due = await daily.subscribe(subscription)
    _audit(message, command.args or "", f"subscribed; next post at {due}")
    await message.reply(t.DAILY_SUBSCRIBED.format(at=subscription.at, timezone=zone_label(timezone)))
