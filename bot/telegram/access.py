"""Who may use the bot: users an admin banned (/ban, /unban) never; with ACCESS=allowlist only the bot's admins
and the users and chats an admin allowed (/allow, /disallow). The bot's admins (ADMIN_IDS) always may.

`AccessControl`, an outer update middleware, checks every update before any handler: one Redis round trip.
A refused update is answered the way its kind allows, without flooding anyone: a private message gets the
refusal at most once an hour per user, a button press and an inline query get it every time (they are
answers, not messages), and in groups and channels the bot stays silent.

Keys (under the deployment prefix, ids are integers):
    bot:access:banned          hash user_id -> JSON {by, at}
    bot:access:allowed         set of user ids (> 0) and chat ids (< 0)
    bot:access:told:{user_id}  set for an hour after a user was told they may not use the bot
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable, Literal

from aiogram.exceptions import TelegramAPIError
from aiogram.types import InlineQueryResultsButton, Update
from redis.asyncio import Redis

from bot.common.logs import log_event
from bot.common.settings import Settings
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)

TOLD_EVERY_S = 3600
Verdict = Literal["ok", "banned", "not_allowed"]


class AccessList:
    def __init__(self, redis: Redis, prefix: str, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:access:"
        self._settings = settings

    @property
    def _banned_key(self) -> str:
        return f"{self._prefix}banned"

    @property
    def _allowed_key(self) -> str:
        return f"{self._prefix}allowed"

    async def ban(self, user_id: int, by: int) -> bool:
        """False when the user was banned already."""
        record = json.dumps({"by": by, "at": round(time.time(), 3)})
        return bool(await self._redis.hsetnx(self._banned_key, str(int(user_id)), record))

    async def unban(self, user_id: int) -> bool:
        return bool(await self._redis.hdel(self._banned_key, str(int(user_id))))

    async def allow(self, entity_id: int) -> bool:
        return bool(await self._redis.sadd(self._allowed_key, str(int(entity_id))))

    async def disallow(self, entity_id: int) -> bool:
        return bool(await self._redis.srem(self._allowed_key, str(int(entity_id))))

    async def verdict(self, user_id: int | None, chat_id: int | None) -> Verdict:
        if user_id is not None and user_id in self._settings.admin_ids:
            return "ok"
        allowlist = self._settings.access == "allowlist"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hexists(self._banned_key, str(user_id if user_id is not None else 0))
            if allowlist:
                pipe.smismember(self._allowed_key, [str(user_id or 0), str(chat_id or 0)])
            answers = await pipe.execute()
        if answers[0]:
            return "banned"
        if allowlist and not any(answers[1]):
            return "not_allowed"
        return "ok"

    async def first_refusal(self, user_id: int) -> bool:
        """True at most once per TOLD_EVERY_S per user: the private-chat refusal is not repeated to every message."""
        return bool(await self._redis.set(f"{self._prefix}told:{int(user_id)}", "1", nx=True, ex=TOLD_EVERY_S))


class AccessControl:
    """An outer update middleware (after `UserLanguage`, whose `t` it uses): refused updates reach no handler."""

    def __init__(self, access: AccessList) -> None:
        self.access = access

    async def __call__(self, handler: Callable[[Any, dict[str, Any]], Awaitable[Any]], event: Update,
                       data: dict[str, Any]) -> Any:
        user, chat = data.get("event_from_user"), data.get("event_chat")
        if user is None and chat is None:
            return await handler(event, data)
        user_id, chat_id = (user.id if user is not None else None), (chat.id if chat is not None else None)
        verdict = await self.access.verdict(user_id, chat_id)
        if verdict == "ok":
            return await handler(event, data)
        log_event(log, "access refused", {"user_id": user_id, "chat_id": chat_id, "update_id": event.update_id,
                                          "verdict": verdict})
        try:
            await self._refuse(event, verdict, data["t"], user_id)
        except TelegramAPIError as error:
            log.info("access refusal not shown: %s", error)
        return None

    async def _refuse(self, update: Update, verdict: Verdict, t: Texts, user_id: int | None) -> None:
        text = t.ACCESS_BANNED if verdict == "banned" else t.ACCESS_NOT_ALLOWED.format(user_id=user_id)
        if update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
        elif update.inline_query is not None:
            await update.inline_query.answer([], cache_time=60, is_personal=True, button=InlineQueryResultsButton(
                text=t.INLINE_ACCESS_DENIED, start_parameter="access"))
        elif (update.message is not None and update.message.chat.type == "private" and user_id is not None
              and await self.access.first_refusal(user_id)):
            await update.message.answer(text)
