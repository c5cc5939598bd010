"""/start and /help."""
from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from bot.telegram.texts import Texts

router = Router(name="start_help")


@router.message(CommandStart())
async def start(message: Message, bot: Bot, t: Texts) -> None:
    if message.chat.type in ("group", "supergroup"):  # plain text there is not meant for the bot: say what is
        await message.answer(t.START_GROUP.format(bot_username=(await bot.me()).username))
    else:
        await message.answer(t.START)


@router.message(Command("help"))
async def help_(message: Message, bot: Bot, t: Texts) -> None:
    me = await bot.me()
    await message.answer(t.HELP.format(bot_username=me.username))
