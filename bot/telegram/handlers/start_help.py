"""/start and /help."""
from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from bot.telegram import texts

router = Router(name="start_help")


@router.message(CommandStart())
async def start(message: Message) -> None:
    await message.answer(texts.START)


@router.message(Command("help"))
async def help_(message: Message, bot: Bot) -> None:
    me = await bot.me()
    await message.answer(texts.HELP.format(bot_username=me.username))
