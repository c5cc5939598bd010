"""The queue's tunables, as one plain config object (`Settings.queue_config()` builds it; its defaults are
the settings')."""
from __future__ import annotations

from dataclasses import dataclass

from bot.common.settings import default_of


@dataclass(frozen=True)
class QueueConfig:
    prefix: str = default_of("redis_prefix")
    max_queue: int = default_of("max_queue")  # outstanding requests (both streams) above which submit refuses
    max_deliveries: int = default_of("max_deliveries")  # a request delivered more often than this is dead-lettered
    claim_idle_ms: int = default_of("claim_idle_ms")  # a pending request idle this long belongs to a dead worker
    stream_maxlen: int = default_of("stream_maxlen")  # approximate cap per stream: a safety net, not backpressure
    dedupe_ttl_s: int = default_of("result_dedupe_ttl_s")  # how long the result reader remembers a request_id

    def __post_init__(self) -> None:
        if self.max_queue > self.stream_maxlen:
            raise ValueError("max_queue above stream_maxlen would let MAXLEN trim requests nobody has read")
