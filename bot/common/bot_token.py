"""The bot token, checked before anything starts (by `rujokes-bot` and by `rujokes run`): fail fast."""
from __future__ import annotations

import re

# "<bot id>:<35 characters>" as @BotFather hands them out.
_TOKEN = re.compile(r"^\d{3,}:[A-Za-z0-9_-]{30,}$")

TOKEN_HELP = (
    "Задайте BOT_TOKEN: создайте бота у @BotFather (https://t.me/BotFather, команда /newbot) и впишите "
    "выданный токен в .env: BOT_TOKEN=123456789:AA...\n"
    "Set BOT_TOKEN: create a bot with @BotFather (https://t.me/BotFather, /newbot) and put the token it "
    "gives you into .env as BOT_TOKEN=123456789:AA..."
)


def token_problem(token: str) -> str | None:
    """Why this token cannot work, or None. Checked before anything starts: fail fast."""
    if not token.strip():
        return "BOT_TOKEN is empty / BOT_TOKEN не задан"
    if not _TOKEN.match(token.strip()):
        return "BOT_TOKEN is malformed (expected '<digits>:<secret>') / BOT_TOKEN имеет неверный формат"
    return None
