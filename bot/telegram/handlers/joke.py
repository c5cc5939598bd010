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


def origin_of(message: Message, update: Update) -> ChatOrigin:
    return ChatOrigin(chat_id=message.chat.id, user_id=message.from_user.id if message.from_user else 0,
                      private=message.chat.type == "private", reply_to_message_id=message.message_id,
                      update_id=update.update_id)


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
