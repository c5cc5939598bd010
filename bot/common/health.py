"""What `/healthz` says about a process's main loop: it went round, and Redis answered, recently."""
from __future__ import annotations

import time
from typing import Any


class Liveness:
    """Written from the event loop, read from the metrics server's thread (plain float writes are atomic enough)."""

    def __init__(self) -> None:
        self.loop_at: float | None = None      # monotonic: the main loop finished an iteration
        self.redis_ok_at: float | None = None  # monotonic: a Redis round trip succeeded

    def loop_went_round(self) -> None:
        self.loop_at = time.monotonic()

    def redis_answered(self) -> None:
        self.redis_ok_at = time.monotonic()

    def report(self, stale_after_s: float, loop_key: str = "loop_age_s") -> dict[str, Any]:
        """{"healthy": both ages within stale_after_s, loop_key: age, "redis_ok_age_s": age} (ages None: never)."""
        now = time.monotonic()
        loop_age = None if self.loop_at is None else round(now - self.loop_at, 3)
        redis_age = None if self.redis_ok_at is None else round(now - self.redis_ok_at, 3)
        healthy = (loop_age is not None and loop_age <= stale_after_s
                   and redis_age is not None and redis_age <= stale_after_s)
        return {"healthy": healthy, loop_key: loop_age, "redis_ok_age_s": redis_age}
