"""`rujokes-bot`: read Settings, check the token, serve Telegram until SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import re
import signal
import sys

from bot.logging_setup import configure_logging
from bot.queue.connection import connect
from bot.settings import Settings, load_settings
from bot.shutdown import run_bounded

log = logging.getLogger("bot.bot_main")

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


async def serve(settings: Settings) -> None:
    from bot.app import run  # lazy: aiogram's import is the slow part of startup

    if not settings.redis_url:
        log.warning("REDIS_URL is empty: this bot starts its own Redis, which no worker shares; "
                    "use `rujokes run` or point REDIS_URL at the workers' Redis")
    await run(settings, connect(settings.redis_url, settings.redis_data_dir))  # run closes it when it stops


def main() -> None:
    settings = load_settings("rujokes-bot")
    configure_logging(settings.log_format, settings.log_level)
    problem = token_problem(settings.bot_token.get_secret_value())
    if problem:
        print(f"rujokes-bot: {problem}\n{TOKEN_HELP}", file=sys.stderr)
        sys.exit(2)
    # Until the bot's own handlers take over (bot/app.py), SIGTERM stops it as Ctrl+C does: exit code 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from aiogram.exceptions import TelegramUnauthorizedError  # after the checks: fail fast, import late

    try:
        run_bounded(serve(settings))  # unlike asyncio.run, never waits forever for a task that will not end
    except TelegramUnauthorizedError:
        print(f"rujokes-bot: Telegram rejected BOT_TOKEN (401 Unauthorized) / Telegram отклонил BOT_TOKEN\n"
              f"{TOKEN_HELP}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
