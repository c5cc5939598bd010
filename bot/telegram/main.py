"""`rujokes-bot`: read Settings, check the token, serve Telegram until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from bot.common.bot_token import TOKEN_HELP, token_problem
from bot.common.logs import configure_logging
from bot.common.settings import Settings, load_settings
from bot.common.shutdown import run_bounded
from bot.queue.connection import connect

log = logging.getLogger("bot.telegram.main")


async def serve(settings: Settings, await_worker_s: float = 0.0) -> None:
    from bot.telegram.app import run  # lazy: aiogram's import is the slow part of startup

    if not settings.redis_url:
        log.warning("REDIS_URL is empty: this bot starts its own Redis, which no worker shares; "
                    "use `rujokes run` or point REDIS_URL at the workers' Redis")
    await run(settings, connect(settings.redis_url, settings.redis_data_dir), await_worker_s)  # run closes it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rujokes-bot", description="Serve Telegram: configured by the "
                                     "environment and .env (see .env.example).")
    parser.add_argument("--await-worker-s", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long for a worker's heartbeat before taking updates (rujokes run "
                             "starts its bots beside the worker with it); default: take them at once")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings("rujokes-bot")
    configure_logging(settings.log_format, settings.log_level, settings.secret_values())
    problem = token_problem(settings.bot_token.get_secret_value())
    if problem:
        print(f"rujokes-bot: {problem}\n{TOKEN_HELP}", file=sys.stderr)
        sys.exit(2)
    # Until the bot's own handlers take over (bot/telegram/app.py), SIGTERM stops it as Ctrl+C does: exit code 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from aiogram.exceptions import TelegramUnauthorizedError  # after the checks: fail fast, import late

    try:
        # Unlike asyncio.run, never waits forever for a task that will not end.
        run_bounded(serve(settings, args.await_worker_s))
    except TelegramUnauthorizedError:
        print(f"rujokes-bot: Telegram rejected BOT_TOKEN (401 Unauthorized) / Telegram отклонил BOT_TOKEN\n"
              f"{TOKEN_HELP}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    except Exception:  # through the log, so that the redacting formatter sees the traceback (a URL holds the token)
        log.exception("rujokes-bot stopped by an error")
        sys.exit(1)


if __name__ == "__main__":
    main()
