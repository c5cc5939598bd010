"""The bot's memory of the requests it is still waiting on, in Redis so that it survives a bot restart.

Keys (under the deployment prefix):
    bot:outstanding:{request_id}     JSON of `Outstanding`; `message_id` is set once a message to edit exists
    bot:outstanding:due              sorted set request_id -> time to give up waiting and apologise
    bot:inline_prompt:{token}        the prompt behind an inline "✍️ Написать" article (short TTL)
    bot:inline_started:{id}          set once generation started for an inline message (no double start)
    bot:update:{update_id}           "done" once an update became a request or a refusal; while it is being
                                     handled, the id of the bot process handling it (see `claim_update`)
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Awaitable, Callable

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bot.queue.protocol import Delivery, JokeRequest, key_part
from bot.queue.submit import QueueFull
from bot.telegram.texts import DEFAULT_LANGUAGE

log = logging.getLogger(__name__)

# Longer than Redis can lose in a crash (appendfsync everysec: about a second), short enough to stay small.
ANSWERED_MEMORY_S = 300.0
_RECORD_GRACE_S = 3600  # keep a record this long past give-up, so a late joke still finds its message
# Telegram keeps an unconfirmed update for 24 h and re-delivers it to the next getUpdates: remember longer.
UPDATE_TTL_S = 48 * 3600
_DONE = "done"
# Atomic, so that one update is handled by one handler. A claim held by another process means that
# process died mid-update (one bot serves a token at a time: bot/telegram/lease.py): the update is handled again.
_CLAIM_UPDATE_LUA = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


class Outstanding(BaseModel):
    request_id: str
    delivery: Delivery
    prompt: str
    kind: str
    user_id: int | None = None
    give_up_at: float
    created_at: float | None = None  # the request's creation (its update's arrival); None in older records
    language: str = DEFAULT_LANGUAGE  # of the texts around the answer (an apology, the buttons)


class OutstandingRequests:
    def __init__(self, redis: Redis, prefix: str, inline_prompt_ttl_s: int = 3600) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:"
        self._inline_prompt_ttl_s = inline_prompt_ttl_s
        self._instance = uuid.uuid4().hex  # this bot process, in the claims of the updates it handles
        self._claim_update_script = redis.register_script(_CLAIM_UPDATE_LUA)
        # What this process submitted and still waits for, in memory too: Redis with `appendfsync everysec`
        # can lose its last second in a crash, requests and records alike (see `resubmit_after_restart`).
        self._waiting: dict[str, tuple[JokeRequest, Outstanding, int | None]] = {}
        self._answered: dict[str, float] = {}  # request id -> when it was forgotten (ANSWERED_MEMORY_S)
        self._redis_run_id: str | None = None

    def _record_key(self, request_id: str) -> str:
        return f"{self._prefix}outstanding:{request_id}"

    @property
    def _due_key(self) -> str:
        return f"{self._prefix}outstanding:due"

    def _update_key(self, update_id: int) -> str:
        return f"{self._prefix}update:{int(update_id)}"

    def track_in(self, pipe: Pipeline, request: JokeRequest, give_up_at: float, update_id: int | None = None,
                 language: str = DEFAULT_LANGUAGE) -> Outstanding:
        """Add the request's record to `pipe`, the transaction that submits it (RequestSubmitter.submit's `along`):
        a fast worker's answer finds the record, and a bot killed before the transaction leaves neither, so the
        update it came from is handled again. The update that asked (if any) is settled with it: from then on
        this request is what answers it."""
        record = Outstanding(request_id=request.request_id, delivery=request.delivery, prompt=request.prompt,
                             kind=request.kind, user_id=request.user_id, give_up_at=give_up_at,
                             created_at=request.created_at, language=language)
        ttl = max(1, int(give_up_at - time.time()) + _RECORD_GRACE_S)
        pipe.set(self._record_key(request.request_id), record.model_dump_json(), ex=ttl)
        pipe.zadd(self._due_key, {request.request_id: give_up_at})
        if update_id is not None:
            pipe.set(self._update_key(update_id), _DONE, ex=UPDATE_TTL_S)
        self._waiting[request.request_id] = (request, record, update_id)
        return record

    # -- updates: Telegram re-delivers what a killed bot did not confirm ----------------------------

    async def claim_update(self, update_id: int | None) -> bool:
        """True when this process should handle the update: never seen, or left half-handled by a bot
        process that died. False for one already settled (`track`, `settle_update`) or in hand here."""
        if update_id is None:
            return True
        return bool(await self._claim_update_script(keys=[self._update_key(update_id)],
                                                    args=[self._instance, _DONE, UPDATE_TTL_S]))

    async def settle_update(self, update_id: int | None) -> None:
        """The update got its answer without a request (a refusal): a re-delivery gets nothing."""
        if update_id is not None:
            await self._redis.set(self._update_key(update_id), _DONE, ex=UPDATE_TTL_S)

    async def get(self, request_id: str) -> Outstanding | None:
        raw = await self._redis.get(self._record_key(request_id))
        return Outstanding.model_validate_json(raw) if raw else None

    async def set_message_id(self, request_id: str, message_id: int) -> None:
        """A message now exists for this request (e.g. drafts failed): later updates edit it."""
        record = await self.get(request_id)
        if record is None or record.delivery.chat_id is None:
            return
        record.delivery = record.delivery.model_copy(update={"message_id": message_id})
        await self._redis.set(self._record_key(request_id), record.model_dump_json(), keepttl=True)

    async def forget(self, request_id: str) -> None:
        """The request is answered: nothing to wait for or time out."""
        self._waiting.pop(request_id, None)
        self._answered[request_id] = time.monotonic()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._due_key, request_id)
            pipe.delete(self._record_key(request_id))
            await pipe.execute()

    async def claim_overdue(self, now: float | None = None, limit: int = 100) -> list[Outstanding]:
        """Requests past their give-up time, each handed to exactly one caller (ZREM decides).

        Records stay, so a result that arrives later still edits the same message.
        """
        due = await self._redis.zrangebyscore(self._due_key, "-inf", now or time.time(), start=0, num=limit)
        claimed: list[Outstanding] = []
        for request_id in due:
            if not await self._redis.zrem(self._due_key, request_id):
                continue  # answered or claimed meanwhile
            self._waiting.pop(request_id, None)  # apologised for: not worth submitting again
            record = await self.get(request_id)
            if record is not None:
                claimed.append(record)
        return claimed

    async def resubmit_after_restart(self, submit: Callable[[JokeRequest], Awaitable[object]]) -> int:
        """When Redis restarted since the last call (its run_id changed), write again the records of what this
        process still waits for and submit those requests again: what a crash lost comes back, and what it
        kept is answered twice at most, a duplicate the results reader drops. Returns how many were submitted."""
        run_id = (await self._redis.info("server")).get("run_id")
        restarted = self._redis_run_id is not None and run_id != self._redis_run_id
        self._redis_run_id = run_id
        recent = time.monotonic() - ANSWERED_MEMORY_S
        self._answered = {rid: at for rid, at in self._answered.items() if at > recent}
        if not restarted:
            return 0
        for request_id in list(self._answered):  # a forget the crash lost would bring a late apology back
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._due_key, request_id)
                pipe.delete(self._record_key(request_id))
                await pipe.execute()
        waiting = list(self._waiting.values())
        for request, record, update_id in waiting:
            ttl = max(1, int(record.give_up_at - time.time()) + _RECORD_GRACE_S)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._record_key(request.request_id), record.model_dump_json(), ex=ttl, nx=True)
                pipe.zadd(self._due_key, {request.request_id: record.give_up_at}, nx=True)
                if update_id is not None:
                    pipe.set(self._update_key(update_id), _DONE, ex=UPDATE_TTL_S)
                await pipe.execute()
            try:
                await submit(request)
            except QueueFull:  # the give-up sweep apologises for it in time
                log.warning("request %s not submitted again: the queue is full", request.request_id)
        return len(waiting)

    # -- inline messages ---------------------------------------------------------------------------

    def _inline_prompt_key(self, token: str) -> str:
        return f"{self._prefix}inline_prompt:{key_part(token)}"

    def _inline_started_key(self, inline_message_id: str) -> str:
        return f"{self._prefix}inline_started:{key_part(inline_message_id)}"  # Telegram's string

    async def remember_inline_prompt(self, token: str, prompt: str) -> None:
        await self._redis.set(self._inline_prompt_key(token), prompt, ex=self._inline_prompt_ttl_s)

    async def inline_prompt(self, token: str) -> str | None:
        return await self._redis.get(self._inline_prompt_key(token))

    async def claim_inline_message(self, inline_message_id: str) -> bool:
        """True once per inline message: chosen_inline_result and the button may both try to start it."""
        return bool(await self._redis.set(self._inline_started_key(inline_message_id), "1",
                                          nx=True, ex=self._inline_prompt_ttl_s))

    async def release_inline_message(self, inline_message_id: str) -> None:
        """Undo `claim_inline_message` when the start was refused: a later press may try again."""
        await self._redis.delete(self._inline_started_key(inline_message_id))
