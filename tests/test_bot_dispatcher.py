"""The bot's dispatcher as `rujokes-bot` builds it (bot/telegram/app.py), fed updates in this process: it keeps
no state per user or chat in memory, however many it sees (the soak's bound on the bot's RSS depends on it)."""
from __future__ import annotations

from aiogram.fsm.middleware import FSMContextMiddleware
from aiogram.types import Update
from prometheus_client import CollectorRegistry

from bot.common.metrics import Metrics
from bot.common.settings import Settings
from bot.telegram.app import build_dispatcher, build_services


async def test_updates_from_hundreds_of_new_users_leave_nothing_behind_in_memory(bot, api, redis_client, key_prefix):
    settings = Settings(bot_token=api.token, redis_prefix=key_prefix)
    dispatcher = build_dispatcher(settings, build_services(settings, redis_client, bot, Metrics(CollectorRegistry())))
    assert not any(isinstance(m, FSMContextMiddleware) for m in dispatcher.update.outer_middleware)
    for n in range(200):  # stickers in new private chats: each is answered with a hint
        user = {"id": 50_000 + n, "is_bot": False, "first_name": "Гость"}
        await dispatcher.feed_update(bot, Update.model_validate({"update_id": 9_000 + n, "message": {
            "message_id": 1, "date": 0, "chat": {"id": user["id"], "type": "private"}, "from": user,
            "sticker": {"file_id": "s", "file_unique_id": "s", "type": "regular", "width": 1, "height": 1,
                        "is_animated": False, "is_video": False, "emoji": "😂"}}}, context={"bot": bot}))
    assert len(api.calls("sendMessage")) == 200  # every one was handled
    assert not dispatcher.fsm.storage.storage  # aiogram's in-memory FSM kept a record per chat and user
