"""The worker's own config: a plain object built from Settings by `rujokes-worker`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str                  # also the consumer name in the Redis group: keep it stable across restarts
    batch_size: int = 8             # most requests per engine.generate call
    block_ms: int = 1000            # idle poll; also bounds how long a stop request waits for Redis
    default_size: str = "nano"      # for "active" requests until an admin sets an active size
    heartbeat_ttl_s: float = 15.0
    shutdown_grace_s: float = 30.0  # how long a stop waits for the running batch before handing it back
    partial_interval_s: float = 0.7  # throttle: partial edits cost Telegram API calls
    device: str = "cpu"             # reported in the heartbeat only
