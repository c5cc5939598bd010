"""One bot process at a time talks to Telegram; the others wait as hot standbys.

A restarted bot spends seconds importing aiogram before it can poll (BENCHMARKS.md, "Fault matrix"). A
standby has done that already: it holds everything built and waits for a lease in Redis, which the active
process renews every `ttl_s / 4`. When the active process dies, its lease lapses after `ttl_s` and a standby
takes over, re-reading what the dead one had not confirmed, like any restart (the inbox, the results'
pending list). A clean stop releases the lease at its end (for `ttl_s` it then names who released it), so a
standby takes over at once.

Two rules keep two processes from serving at the same time for long:
- A process whose renewal finds another holder stops (it had stalled past `ttl_s`, or Redis lost the key
  and a standby took it): `keep` returns and the bot shuts down as on SIGTERM. Its supervisor starts it
  again, as a standby.
- Redis out of reach is not a lost lease (nobody else can take it either); and when Redis comes back
  without the key (a restart that lost it), the incumbent takes it back first: a standby takes a lease only
  after seeing it free twice, a renewal interval apart, or RECONNECT_GRACE_S apart after an outage.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from contextlib import suppress

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.logs import Sparse

log = logging.getLogger(__name__)

# Renew the lease if it is still ours, or take it back if it is gone (Redis lost it); 0: another holds it.
_RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# A released lease says who released it, so that a standby takes it at once (no second sighting: nobody else will
# renew it) and says in its log that it was handed over.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2] .. ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""

# Take the lease if it still reads what this standby saw (a release marker), or is free (ARGV[1] empty).
_TAKE_LUA = """
local holder = redis.call('GET', KEYS[1])
if (holder or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
RELEASED = "released:"
# After Redis was out of reach, how long a standby must see the lease free before it takes it: the incumbent's
# client may be in its retry backoff when Redis returns (bot/queue/connection.py: up to 2 s between tries),
# and a lease lost that way makes two processes deliver at once for a moment.
RECONNECT_GRACE_S = 4.0


def lease_key(prefix: str) -> str:
    return f"{prefix}bot:lease"


class BotLease:
    """The right to talk to Telegram for this bot token: `acquire`, then `keep` it until it is lost or released."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self._redis = redis
        self.key = lease_key(prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.renew_s = ttl_s / 4  # three renewals may fail (a stalled event loop) before the lease lapses
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"  # for the logs, and unique
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._take = redis.register_script(_TAKE_LUA)
        self.redis_ok_at: float | None = None  # monotonic: for a standby's /healthz

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or `stop` is set (False). Redis outages are waited out."""
        free_since: float | None = None  # when the lease was first seen free, in this run of sightings
        reported: str | None = None
        after_outage = False  # Redis failed since the lease was last seen held: give the incumbent longer
        unavailable = Sparse(log)  # an outage would log every half renewal interval
        while not stop.is_set():
            try:
                holder = await self._redis.get(self.key)
                self.redis_ok_at = time.monotonic()
                if holder is not None and holder.startswith(RELEASED):
                    if await self._take(keys=[self.key], args=[holder, self.holder, self.ttl_ms]):
                        log.info("took the Telegram lease (%s), handed over by %s", self.holder,
                                 holder.removeprefix(RELEASED))
                        return True
                elif holder is not None:
                    free_since, after_outage = None, False
                    if holder != reported:
                        log.info("standby: %s serves Telegram; this bot takes over when its lease lapses", holder)
                        reported = holder
                elif free_since is None:
                    free_since = time.monotonic()
                elif time.monotonic() - free_since >= (RECONNECT_GRACE_S if after_outage else self.renew_s):
                    # The incumbent had its chance to renew.
                    if await self._take(keys=[self.key], args=["", self.holder, self.ttl_ms]):
                        log.info("took the Telegram lease (%s)%s", self.holder,
                                 f" from {reported}, whose lease lapsed" if reported else "")
                        return True
                    free_since = None
            except RedisError as error:
                free_since, after_outage = None, True
                unavailable.warning("standby: Redis unavailable (%s); waiting", error)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_s / 2)
        return False

    async def keep(self) -> str:
        """Renew the lease until another process holds it; returns that holder. Cancel it to stop renewing."""
        failing = False
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                if not await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]):
                    holder = await self._redis.get(self.key)
                    return holder or "another bot process"
                if failing:
                    log.info("Telegram lease renewed again")
                failing = False
            except RedisError as error:  # nobody can take it meanwhile; it is taken back when Redis returns
                if not failing:
                    log.warning("Telegram lease not renewed: Redis unavailable (%s); keeping on", error)
                failing = True

    async def release(self) -> None:
        """Give the lease up if still ours, so that a standby takes over at once (the end of a clean stop)."""
        with suppress(RedisError):
            if await self._release(keys=[self.key], args=[self.holder, RELEASED, self.ttl_ms]):
                log.info("released the Telegram lease")
