"""Jokes in chats: /joke [opening] anywhere, /joke as a reply (the replied text is the opening),
and plain text in private chats.

Commands addressed to another bot (/joke@other_bot) never match: aiogram's Command filter
compares the mention with our username.
"""
from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message, Update

from bot.telegram.jokes import ChatOrigin, JokeService

router = Router(name="joke")


def sender_id(message: Message) -> int:
    """Whose budget a message spends. Sent as a group (anonymous admins) or as a channel, `from` is one of
    Telegram's stand-in users, the same in every chat: the group or channel is the sender then."""
    if message.sender_chat is not None:
        return message.sender_chat.id
    return message.from_user.id if message.from_user else 0


def origin_of(message: Message, update: Update) -> ChatOrigin:
    return ChatOrigin(chat_id=message.chat.id, user_id=sender_id(message), private=message.chat.type == "private",
                      reply_to_message_id=message.message_id, update_id=update.update_id)


@router.message(Command("joke"))
async def joke_command(message: Message, command: CommandObject, jokes: JokeService, event_update: Update) -> None:
    origin = origin_of(message, event_update)
    replied = message.reply_to_message
    if not (command.args or "").strip() and replied is not None and (replied.text or replied.caption):
        await jokes.joke_in_chat(origin, replied.text or replied.caption, "reply", truncate=True)
        return
    await jokes.joke_in_chat(origin, command.args, "command")


@router.message(F.chat.type == "private", F.text, ~F.text.startswith("/"))
async def plain_text(message: Message, jokes: JokeService, event_update: Update) -> None:
    await jokes.joke_in_chat(origin_of(message, event_update), message.text, "text")
