"""Updates in hand outlive a killed bot process.

aiogram confirms the updates of one getUpdates answer to Telegram with the next getUpdates (its offset)
while their handlers may still run, and a webhook answers Telegram before they end, so a process killed
meanwhile would lose them: Telegram will not send them again. `UpdateInbox` writes each update to Redis
before Telegram can forget it: as a session middleware on getUpdates (the whole answer, before the polling
loop asks for more), in the webhook handler before it answers (`keep_raw`), and, for anything else fed to
the dispatcher, as the outermost update middleware. It removes the update once its handlers end (or, if
Redis refused that, at its next round). Every ROUND_S each process says it is alive and `replay`s, handing
the dispatcher what a stopped process left (its alive key gone: a restart after a SIGKILL replays within
ALIVE_TTL_S), and what a live one has held for longer than REPLAY_AFTER_S. A process that holds the Telegram
lease (bot/telegram/lease.py: `exclusive`) is the only one handling updates, so it replays what any other left
at once: a standby that took over from a killed bot does not wait for the dead one's alive key to expire. A
replayed /joke is then claimed afresh (bot/telegram/outstanding.py's update claims): answered once, never twice.

Keys (under the deployment prefix):
    bot:inbox               hash update_id -> JSON {instance, at, update}
    bot:alive:{instance}    set by each bot process every ROUND_S, expiring after ALIVE_TTL_S
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

log = logging.getLogger(__name__)

# Longer than any handler runs (an inline query waits INLINE_WAIT_S, a reply takes a few Bot API calls):
# an entry this old from a live process is one that process will never finish.
REPLAY_AFTER_S = 30.0
ROUND_S = 2.0
# Three rounds: a process that missed them (SIGKILL, a frozen machine) has stopped.
ALIVE_TTL_S = 6.0


class UpdateInbox:
    def __init__(self, redis: Redis, prefix: str, exclusive: bool = False) -> None:
        self._redis = redis
        self.exclusive = exclusive  # no other process handles updates while this one replays
        self._key = f"{prefix}bot:inbox"
        self._alive_prefix = f"{prefix}bot:alive:"
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

    async def say_alive(self) -> None:
        await self._redis.set(self._alive_prefix + self.instance, "1", px=int(ALIVE_TTL_S * 1000))

    async def replay(self, dispatcher: Dispatcher, bot: Bot, now: float | None = None) -> int:
        """Feed the dispatcher the updates other processes left unfinished; returns how many."""
        now = time.time() if now is None else now
        await self._remove_unremoved()
        entries = {field: json.loads(raw) for field, raw in (await self._redis.hgetall(self._key)).items()}
        others = sorted({entry["instance"] for entry in entries.values()} - {self.instance})
        alive: set[str] = set()
        if others:
            flags = await self._redis.mget([self._alive_prefix + instance for instance in others])
            alive = {instance for instance, flag in zip(others, flags) if flag}
        updates = []
        for field, entry in entries.items():
            age = now - entry["at"]
            # Younger than ALIVE_TTL_S: its process may not have said it is alive yet.
            if entry["instance"] == self.instance or not self.exclusive and (age < ALIVE_TTL_S or (
                    entry["instance"] in alive and age < REPLAY_AFTER_S)):
                continue
            how = "that stopped" if entry["instance"] not in alive else f"still running, after {age:.0f} s"
            log.warning("replaying update %s, left unfinished by a bot process %s", field, how)
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
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, dispatcher: Dispatcher, bot: Bot) -> None:
        unavailable = Sparse(log, interval_s=30.0)
        while True:
            try:
                await self.say_alive()
                await self.replay(dispatcher, bot)
            except RedisError as error:
                unavailable.warning("Redis unavailable for the update inbox (%s); retrying", error)
            except Exception:
                log.exception("replaying the update inbox failed; continuing")
            await asyncio.sleep(ROUND_S)
