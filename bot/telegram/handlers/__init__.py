"""One Router per feature; bot/telegram/app.py assembles them in order (the fallback router goes last)."""
from __future__ import annotations

from aiogram import Router

from bot.telegram.handlers import admin, buttons, fallback, inline, joke, settings, start_help


def feature_routers() -> list[Router]:
    # Order matters: specific handlers first, the catch-all fallback (hints, errors) last.
    return [start_help.router, admin.router, settings.router, joke.router, buttons.router, inline.router,
            fallback.router]
