"""/broadcast: an admin's message to every chat subscribed to the daily joke, after a confirmation step.

`/broadcast TEXT` stores the text and answers with a preview, the number of chats, and two signed buttons.
"Send" (pressed by an admin, once: a compare-and-set on the state) snapshots the recipients and starts a
runner; "Cancel" stops it, before or during the sending. The runner sends at BROADCAST_PER_SECOND (the
session's FloodControl waits out any 429) and moves a cursor in Redis *before* each send, so a restart resumes
where it stopped and never sends a chat the message twice (a crash mid-send may skip that one chat). One
runner per broadcast across bot processes: it holds a lease that it renews with every message. At the end
the confirmation message says how many chats got it.

Keys (under the deployment prefix; a broadcast's keys expire BROADCAST_TTL_S after it was created):
    bot:broadcast:{id}          hash {text, by, chat_id, language, message_id, state, sent, failed, created}
    bot:broadcast:{id}:to       list of the recipient chat ids, fixed when "Send" was pressed
    bot:broadcast:{id}:next     index of the next recipient
    bot:broadcast:{id}:lease    the id of the bot process running it (LEASE_S)
    bot:broadcasts:active       set of the ids being sent (resumed at start-up)
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from aiogram.exceptions import TelegramAPIError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BROADCAST_TTL_S = 7 * 24 * 3600
LEASE_S = 30
State = Literal["pending", "sending", "done", "cancelled"]

# pending -> sending, with the recipients snapshot; 0 if it was not pending (pressed twice, cancelled, expired).
_START_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'sending')
redis.call('DEL', KEYS[2])
if #ARGV > 1 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 2)) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], 0, 'EX', ARGV[1])
redis.call('SADD', KEYS[4], KEYS[5])
return 1
"""
# pending or sending -> cancelled; 0 otherwise.
_CANCEL_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' and state ~= 'sending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
return 1
"""
# Take or renew the lease: free, expired or already ours.
_LEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

Send = Callable[[int, str], Awaitable[None]]              # (chat_id, text): raises TelegramAPIError when not sent
Finished = Callable[[dict[str, str]], Awaitable[None]]   # the broadcast's hash, once it is done or cancelled


class Broadcasts:
    def __init__(self, redis: Redis, prefix: str, per_second: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:broadcast"
        self.per_second = per_second
        self._instance = uuid.uuid4().hex
        self._start = redis.register_script(_START_LUA)
        self._cancel = redis.register_script(_CANCEL_LUA)
        self._lease = redis.register_script(_LEASE_LUA)
        self._runners: dict[str, asyncio.Task] = {}

    def _key(self, broadcast_id: str, part: str = "") -> str:
        return f"{self._prefix}:{broadcast_id}{':' + part if part else ''}"

    @property
    def _active_key(self) -> str:
        return f"{self._prefix}s:active"

    async def create(self, text: str, by: int, chat_id: int, language: str) -> str:
        """A pending broadcast; `language`: of the admin's confirmation and report."""
        broadcast_id = secrets.token_hex(8)
        key = self._key(broadcast_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"text": text, "by": by, "chat_id": chat_id, "language": language,
                                    "state": "pending", "sent": 0, "failed": 0, "created": f"{time.time():.0f}"})
            pipe.expire(key, BROADCAST_TTL_S)
            await pipe.execute()
        return broadcast_id

    async def set_message(self, broadcast_id: str, message_id: int) -> None:
        """The confirmation message, which the runner edits into the report at the end."""
        await self._redis.hset(self._key(broadcast_id), "message_id", message_id)

    async def get(self, broadcast_id: str) -> dict[str, str] | None:
        return await self._redis.hgetall(self._key(broadcast_id)) or None

    async def begin(self, broadcast_id: str, recipients: list[int]) -> bool:
        """pending -> sending with this list of chats; False when it was not pending."""
        return bool(await self._start(
            keys=[self._key(broadcast_id), self._key(broadcast_id, "to"), self._key(broadcast_id, "next"),
                  self._active_key, broadcast_id],
            args=[BROADCAST_TTL_S, *(str(int(chat)) for chat in recipients)]))

    async def cancel(self, broadcast_id: str) -> bool:
        return bool(await self._cancel(keys=[self._key(broadcast_id)]))

    # -- running -------------------------------------------------------------------------------------

    def run_in_background(self, broadcast_id: str, send: Send, finished: Finished) -> None:
        if broadcast_id not in self._runners or self._runners[broadcast_id].done():
            self._runners[broadcast_id] = asyncio.create_task(self.run(broadcast_id, send, finished),
                                                              name=f"broadcast-{broadcast_id}")

    async def resume(self, send: Send, finished: Finished) -> None:
        """At start-up: go on with the broadcasts a stopped bot process was sending."""
        for broadcast_id in await self._redis.smembers(self._active_key):
            self.run_in_background(broadcast_id, send, finished)

    async def stop(self) -> None:
        await cancel_and_wait(*self._runners.values())

    async def run(self, broadcast_id: str, send: Send, finished: Finished) -> None:
        key, lease = self._key(broadcast_id), self._key(broadcast_id, "lease")
        try:
            while True:
                if not await self._lease(keys=[lease], args=[self._instance, LEASE_S]):
                    return  # another bot process is sending it
                record = await self.get(broadcast_id)
                if record is None or record.get("state") != "sending":
                    break
                position = await self._redis.incr(self._key(broadcast_id, "next")) - 1  # before the send: never twice
                chat = await self._redis.lindex(self._key(broadcast_id, "to"), position)
                if chat is None:
                    await self._redis.hset(key, "state", "done")
                    break
                started = time.monotonic()
                try:
                    await send(int(chat), record["text"])
                    await self._redis.hincrby(key, "sent", 1)
                except TelegramAPIError as error:  # blocked the bot, chat gone, a 429 past FloodControl's patience
                    log.info("broadcast %s to %s not sent: %s", broadcast_id, chat, error)
                    await self._redis.hincrby(key, "failed", 1)
                await asyncio.sleep(max(0.0, 1.0 / self.per_second - (time.monotonic() - started)))
        except RedisError as error:  # resumed by the next start-up (or the next round of resume)
            log.warning("broadcast %s paused, Redis unavailable: %s", broadcast_id, error)
            return
        await self._redis.srem(self._active_key, broadcast_id)
        await self._redis.delete(lease)
        record = await self.get(broadcast_id)
        if record is not None:
            await finished(record)
