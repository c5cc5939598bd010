"""Updates in hand outlive a killed bot process.

aiogram confirms the updates of one getUpdates answer to Telegram with the next getUpdates (its offset)
while their handlers may still run, and a webhook answers Telegram before they end, so a process killed
meanwhile would lose them: Telegram will not send them again. `UpdateInbox` writes each update to Redis
before Telegram can forget it: as a session middleware on getUpdates (the whole answer, before the polling
loop asks for more), in the webhook handler before it answers (`keep_raw`), and, for anything else fed to
the dispatcher, as the outermost update middleware. It removes the update once its handlers end (or, if
Redis refused that, at its next round). Only the process that holds the Telegram lease handles updates and
runs the inbox (bot/telegram/lease.py), so what any other process left is its predecessor's: every ROUND_S it
`replay`s those at once (a standby that took over from a killed bot right away). Should the predecessor have
stalled rather than died, it stops at its next lease renewal; an update it was still handling is claimed
afresh by the replay (bot/telegram/outstanding.py's update claims), as is every replayed /joke.

Keys (under the deployment prefix):
    bot:inbox               hash update_id -> JSON {instance, at, update}
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

from aiogram import Bot, Dispatcher
from aiogram.client.session.middlewares.base import NextRequestMiddlewareType
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Update
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.logs import Sparse
from bot.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ROUND_S = 2.0


class UpdateInbox:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}bot:inbox"
        self.instance = uuid.uuid4().hex
        self._task: asyncio.Task | None = None
        self._kept: set[str] = set()       # kept on receipt, not yet handed to the update middleware
        self._unremoved: set[str] = set()  # handled, but Redis refused to remove them then
        self._not_kept, self._stays = Sparse(log), Sparse(log)  # once per outage, not once per update

    def _entry(self, update: dict[str, Any]) -> str:
        return json.dumps({"instance": self.instance, "at": time.time(), "update": update})

    async def _keep(self, updates: dict[str, dict[str, Any]]) -> bool:
        try:
            await self._redis.hset(self._key, mapping={field: self._entry(u) for field, u in updates.items()})
            return True
        except RedisError as error:  # Redis away: handled all the same, just not replayable
            self._not_kept.warning("updates %s not kept for replay: %s", ", ".join(updates), error)
            return False

    async def keep_received(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                            method: TelegramMethod[TelegramType]) -> TelegramType:
        """A session middleware: getUpdates' answer is kept before the polling loop's next getUpdates confirms it.
        (The chain hands back the method's result, here the list of updates, despite its annotation.)"""
        result = await make_request(bot, method)
        if isinstance(method, GetUpdates) and result:
            updates = {str(u.update_id): u.model_dump(mode="json", exclude_none=True) for u in result}
            if await self._keep(updates):
                self._kept.update(updates)
        return result

    async def keep_raw(self, update: Any) -> None:
        """For the webhook: keep an update as Telegram posted it, before answering Telegram."""
        if isinstance(update, dict) and isinstance(update.get("update_id"), int):
            field = str(update["update_id"])
            if await self._keep({field: update}):
                self._kept.add(field)

    async def __call__(self, handler: Callable[[Any, dict[str, Any]], Awaitable[Any]], event: Update,
                       data: dict[str, Any]) -> Any:
        field = str(event.update_id)
        if field in self._kept:
            self._kept.discard(field)
        else:  # a replay, or an update fed some other way
            await self._keep({field: event.model_dump(mode="json", exclude_none=True)})
        try:
            return await handler(event, data)
        finally:
            try:
                await asyncio.shield(self._redis.hdel(self._key, field))
            except RedisError as error:  # removed at the next round: a restart must not replay it
                self._unremoved.add(field)
                self._stays.warning("update %s stays in the inbox for now: %s", field, error)

    async def _remove_unremoved(self) -> None:
        if self._unremoved:
            fields = list(self._unremoved)
            await self._redis.hdel(self._key, *fields)
            self._unremoved.difference_update(fields)

    async def replay(self, dispatcher: Dispatcher, bot: Bot) -> int:
        """Feed the dispatcher the updates other (earlier) processes left unfinished; returns how many."""
        await self._remove_unremoved()
        entries = {field: json.loads(raw) for field, raw in (await self._redis.hgetall(self._key)).items()}
        updates = []
        for field, entry in entries.items():
            if entry["instance"] == self.instance:
                continue
            log.warning("replaying update %s, left unfinished %.0f s ago by an earlier bot process", field,
                        time.time() - entry["at"])
            updates.append(Update.model_validate(entry["update"], context={"bot": bot}))
        # Side by side, as polling handles them: one slow handler (a placeholder paced behind a burst, an inline
        # query waiting for its jokes) must not hold the others back. Each is kept again, as this process's.
        outcomes = await asyncio.gather(*(dispatcher.feed_update(bot, update) for update in updates),
                                        return_exceptions=True)
        for update, outcome in zip(updates, outcomes):
            if isinstance(outcome, Exception):
                log.error("replaying update %s failed", update.update_id, exc_info=outcome)
        return len(updates)

    def start(self, dispatcher: Dispatcher, bot: Bot) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(dispatcher, bot), name="update-inbox")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self, dispatcher: Dispatcher, bot: Bot) -> None:
        unavailable = Sparse(log, interval_s=30.0)
        while True:
            try:
                await self.replay(dispatcher, bot)
            except RedisError as error:
                unavailable.warning("Redis unavailable for the update inbox (%s); retrying", error)
            except Exception:
                log.exception("replaying the update inbox failed; continuing")
            await asyncio.sleep(ROUND_S)
