"""Things a user is told once, not with every joke: remembered per user in Redis.

Keys (under the deployment prefix):
    bot:told:russian:{user_id}    set once an English speaker heard that the jokes are Russian
"""
from __future__ import annotations

import logging

from aiogram.exceptions import TelegramAPIError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.telegram.outbox import Outbox
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)

# Long enough to be "once" for a person, short enough that the keys of people who left expire.
TOLD_TTL_S = 365 * 24 * 3600


class Notices:
    def __init__(self, redis: Redis, prefix: str, outbox: Outbox) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:told:"
        self._outbox = outbox

    async def jokes_are_russian(self, user_id: int, chat_id: int, t: Texts, thread_id: int | None = None) -> None:
        """Before an English speaker's first joke: the jokes are Russian (the models know nothing else)."""
        if t.language == "ru":
            return
        try:
            if await self._redis.set(f"{self._prefix}russian:{int(user_id)}", "1", nx=True, ex=TOLD_TTL_S):
                await self._outbox.send(chat_id, t.JOKES_ARE_RUSSIAN, thread_id=thread_id)
        except (TelegramAPIError, RedisError) as error:  # a courtesy: never worth failing the joke for
            log.info("the jokes-are-Russian notice for %s not sent: %s", user_id, error)
