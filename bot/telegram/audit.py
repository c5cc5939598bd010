"""The audit log: every admin action (and every refused attempt at one), in the bot's log and in a capped Redis
stream that `/audit` shows to admins. It outlives restarts of the bot and, with AOF, of Redis.

Keys (under the deployment prefix):
    bot:audit    stream of {at, user_id, chat_id, action, args, outcome}, trimmed to about AUDIT_MAXLEN entries
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.logs import log_event

log = logging.getLogger(__name__)

AUDIT_MAXLEN = 10_000
ARGS_CHARS = 200  # of an action's arguments kept (a broadcast's text is kept whole with the broadcast)


@dataclass(frozen=True)
class AuditEntry:
    at: float
    user_id: int | None
    chat_id: int | None
    action: str
    args: str
    outcome: str


class AuditLog:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}bot:audit"

    async def record(self, user_id: int | None, chat_id: int | None, action: str, args: str, outcome: str) -> None:
        fields = {"user_id": user_id, "chat_id": chat_id, "action": action, "args": args[:ARGS_CHARS],
                  "outcome": outcome}
        log_event(log, "admin action", fields, quote=True)
        entry = {"at": f"{time.time():.3f}", **{key: "" if value is None else str(value)
                                                 for key, value in fields.items()}}
        try:
            await self._redis.xadd(self._key, entry, maxlen=AUDIT_MAXLEN, approximate=True)
        except RedisError as error:  # the log line above is the record of last resort
            log.warning("audit entry not stored in Redis: %s", error)

    async def latest(self, count: int = 10) -> list[AuditEntry]:
        def number(value: str | None) -> int | None:
            return int(value) if value else None

        entries = await self._redis.xrevrange(self._key, count=count)
        return [AuditEntry(at=float(fields.get("at") or 0), user_id=number(fields.get("user_id")),
                           chat_id=number(fields.get("chat_id")),
                           action=fields.get("action", ""), args=fields.get("args", ""),
                           outcome=fields.get("outcome", ""))
                for _, fields in entries]
