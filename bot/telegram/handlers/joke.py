"""Jokes in chats: /joke [opening] anywhere, /joke as a reply (the replied text is the opening), plain text
in private chats, and in groups a message that mentions the bot or replies to one of its jokes.

Commands addressed to another bot (/joke@other_bot) never match: aiogram's Command filter
compares the mention with our username.

A mention (`@bot Штирлиц…` anywhere in the message, see bot/telegram/addressing.py): the text without the
mention is the opening; a bare mention as a reply takes the replied text, as /joke does; a bare mention
alone gets a classic opening. A reply to one of the bot's jokes: the reply's text is the opening of a new
joke (README, "Using the bot"); a reply without text (a sticker, a photo) is left alone.
"""
from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.filters import BaseFilter, Command, CommandObject
from aiogram.types import Message, Update

from bot.telegram.addressing import without_bot_mentions
from bot.telegram.feedback import FeedbackStore
from bot.telegram.jokes import ChatOrigin, JokeService, topic_of
from bot.telegram.texts import language_for

router = Router(name="joke")


def sender_id(message: Message) -> int:
    """Whose budget a message spends. Sent as a group (anonymous admins) or as a channel, `from` is one of
    Telegram's stand-in users, the same in every chat: the group or channel is the sender then."""
    if message.sender_chat is not None:
        return message.sender_chat.id
    return message.from_user.id if message.from_user else 0


def origin_of(message: Message, update: Update) -> ChatOrigin:
    language = language_for(message.from_user.language_code if message.from_user else None)
    return ChatOrigin(chat_id=message.chat.id, user_id=sender_id(message), private=message.chat.type == "private",
                      reply_to_message_id=message.message_id, thread_id=topic_of(message), update_id=update.update_id,
                      language=language)


def _replied_text(message: Message) -> str | None:
    replied = message.reply_to_message
    return (replied.text or replied.caption) if replied is not None else None


class MentionsBot(BaseFilter):
    """Passes a message that mentions the bot, handing the handler the rest of its text as `opening`."""

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, Any]:
        me = await bot.me()  # cached by aiogram after the first call
        opening = without_bot_mentions(message.text, message.entities, me.id, me.username)
        if opening is None:
            opening = without_bot_mentions(message.caption, message.caption_entities, me.id, me.username)
        return False if opening is None else {"opening": opening}


class RepliesToOurJoke(BaseFilter):
    """Passes a text reply to a joke the bot wrote in this chat (remembered in Redis when it was shown)."""

    async def __call__(self, message: Message, bot: Bot, feedback: FeedbackStore) -> bool:
        replied = message.reply_to_message
        if replied is None or replied.from_user is None or replied.from_user.id != bot.id or not message.text:
            return False
        return await feedback.chat_joke(message.chat.id, replied.message_id) is not None


@router.message(Command("joke"))
async def joke_command(message: Message, command: CommandObject, jokes: JokeService, event_update: Update) -> None:
    origin = origin_of(message, event_update)
    replied = _replied_text(message)
    if not (command.args or "").strip() and replied:
        await jokes.joke_in_chat(origin, replied, "reply", truncate=True)
        return
    await jokes.joke_in_chat(origin, command.args, "command")


@router.message(~F.text.startswith("/"), MentionsBot())
async def mention(message: Message, opening: str, jokes: JokeService, event_update: Update) -> None:
    origin = origin_of(message, event_update)
    replied = _replied_text(message)
    if not opening and replied:
        await jokes.joke_in_chat(origin, replied, "mention", truncate=True)
        return
    await jokes.joke_in_chat(origin, opening, "mention")


@router.message(F.chat.type != "private", ~F.text.startswith("/"), RepliesToOurJoke())
async def reply_to_joke(message: Message, jokes: JokeService, event_update: Update) -> None:
    await jokes.joke_in_chat(origin_of(message, event_update), message.text, "reply_to_joke")


@router.message(F.chat.type == "private", F.text, ~F.text.startswith("/"))
async def plain_text(message: Message, jokes: JokeService, event_update: Update) -> None:
    await jokes.joke_in_chat(origin_of(message, event_update), message.text, "text")
