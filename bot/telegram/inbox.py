"""Updates in hand outlive a killed bot process.

aiogram confirms the updates of one getUpdates answer to Telegram with the next getUpdates (its offset)
while their handlers may still run, and a webhook answers Telegram before they end, so a process killed
meanwhile would lose them: Telegram will not send them again. `UpdateInbox`, the outermost update
middleware, writes each update to Redis before any handler and removes it when they end;
`replay` (every REPLAY_EVERY_S) hands what another process left for longer than REPLAY_AFTER_S back to
the dispatcher. A replayed /joke is then claimed afresh (bot/telegram/outstanding.py's update claims):
answered once, never twice.

Keys (under the deployment prefix):
    bot:inbox    hash update_id -> JSON {instance, at, update}
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Longer than any handler runs (an inline query waits INLINE_WAIT_S, a reply takes a few Bot API calls):
# an entry this old from another process is one that process will never finish.
REPLAY_AFTER_S = 30.0
REPLAY_EVERY_S = 15.0


class UpdateInbox:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}bot:inbox"
        self.instance = uuid.uuid4().hex
        self._task: asyncio.Task | None = None

    async def __call__(self, handler: Callable[[Any, dict[str, Any]], Awaitable[Any]], event: Update,
                       data: dict[str, Any]) -> Any:
        field = str(event.update_id)
        entry = json.dumps({"instance": self.instance, "at": time.time(),
                            "update": event.model_dump(mode="json", exclude_none=True)})
        try:
            await self._redis.hset(self._key, field, entry)
        except RedisError as error:  # Redis away: handled all the same, just not replayable
            log.warning("update %s not kept for replay: %s", field, error)
        try:
            return await handler(event, data)
        finally:
            try:
                await asyncio.shield(self._redis.hdel(self._key, field))
            except RedisError as error:
                log.warning("update %s stays in the inbox: %s", field, error)

    async def replay(self, dispatcher: Dispatcher, bot: Bot, now: float | None = None) -> int:
        """Feed the dispatcher the updates other processes left unfinished; returns how many."""
        now = time.time() if now is None else now
        replayed = 0
        for field, raw in (await self._redis.hgetall(self._key)).items():
            entry = json.loads(raw)
            if entry["instance"] == self.instance or now - entry["at"] < REPLAY_AFTER_S:
                continue
            log.warning("replaying update %s, left unfinished by a bot process that stopped", field)
            update = Update.model_validate(entry["update"], context={"bot": bot})
            await dispatcher.feed_update(bot, update)  # kept again, as this process's, until handled
            replayed += 1
        return replayed

    def start(self, dispatcher: Dispatcher, bot: Bot) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(dispatcher, bot), name="update-inbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, dispatcher: Dispatcher, bot: Bot) -> None:
        while True:
            try:
                await self.replay(dispatcher, bot)
            except RedisError as error:
                log.warning("Redis unavailable for the update inbox (%s); retrying", error)
            except Exception:
                log.exception("replaying the update inbox failed; continuing")
            await asyncio.sleep(REPLAY_EVERY_S)
