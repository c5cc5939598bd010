"""The queue's tunables, as one plain config object (built from Settings by the processes)."""
from __future__ import annotations

from dataclasses import dataclass

from bot.queue.protocol import DEFAULT_PREFIX


@dataclass(frozen=True)
class QueueConfig:
    prefix: str = DEFAULT_PREFIX
    max_queue: int = 100           # outstanding requests (both streams) above which submit refuses
    max_deliveries: int = 3        # a request delivered more often than this is dead-lettered
    claim_idle_ms: int = 30_000    # a pending request idle this long belongs to a dead worker
    stream_maxlen: int = 10_000    # approximate cap per stream: a safety net, not the backpressure
    dedupe_ttl_s: int = 86_400     # how long the result reader remembers a handled request_id

    def __post_init__(self) -> None:
        if self.max_queue > self.stream_maxlen:
            raise ValueError("max_queue above stream_maxlen would let MAXLEN trim requests nobody has read")
