"""The worker's own config: a plain object that `rujokes-worker` builds from Settings (defaults included)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from bot.common.settings import Settings, default_of


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str  # also the consumer name in the Redis group: keep it stable across restarts
    batch_size: int = default_of("worker_batch_size")  # most requests per engine.generate call
    block_ms: int = default_of("worker_block_ms")  # idle poll; also bounds how long a stop request waits for Redis
    default_size: str = default_of("default_size")  # for "active" requests until an admin sets an active size
    heartbeat_ttl_s: float = default_of("heartbeat_ttl_s")
    shutdown_grace_s: float = default_of("shutdown_grace_s")  # a stop's wait for the running batch, then handed back
    partial_interval_s: float = default_of("partial_interval_s")  # throttle: partial edits cost Telegram API calls
    device: str = "cpu"  # what the engine runs on ("auto" resolved); reported in the heartbeat only

    @classmethod
    def from_settings(cls, settings: Settings, device: str | None = None) -> WorkerConfig:
        """`device` is what the engine actually picked (auto resolves to cpu or cuda)."""
        return cls(
            worker_id=settings.worker_id or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=settings.worker_batch_size,
            block_ms=settings.worker_block_ms,
            default_size=settings.default_size,
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            shutdown_grace_s=settings.shutdown_grace_s,
            partial_interval_s=settings.partial_interval_s,
            device=device or settings.device,
        )
