"""One Router per feature; bot/telegram/app.py assembles them in order (the fallback router goes last)."""
from __future__ import annotations

from aiogram import Router

from bot.telegram.handlers import (
    access_admin,
    admin,
    broadcast,
    buttons,
    daily,
    fallback,
    inline,
    joke,
    settings,
    start_help,
    stats,
)


def feature_routers() -> list[Router]:
    # Order matters: specific handlers first, the catch-all fallback (hints, errors) last.
    return [start_help.router, admin.router, access_admin.router, broadcast.router, stats.router, settings.router,
            daily.router, joke.router, buttons.router, inline.router,
            fallback.router]
