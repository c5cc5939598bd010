"""The worker's own config: a plain object that `rujokes-worker` builds from Settings (defaults included)."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from bot.common.settings import Settings, default_of
from rujokes_model.config import SIZES

log = logging.getLogger(__name__)


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
    def from_settings(cls, settings: Settings, device: str | None = None,
                      loaded_sizes: list[str] | None = None) -> WorkerConfig:
        """`device` is what the engine actually picked (auto resolves to cpu or cuda); `loaded_sizes`, the
        sizes it loaded: a DEFAULT_SIZE it lacks becomes its largest one (logged), so that a worker set up
        for other sizes answers "active" requests instead of refusing every one."""
        default_size = settings.default_size
        if loaded_sizes and default_size not in loaded_sizes:
            default_size = max(loaded_sizes, key=SIZES.index)
            log.warning("DEFAULT_SIZE=%s is not loaded by this worker: its 'active' requests get %s, the "
                        "largest size it has, until an admin picks one with /model", settings.default_size,
                        default_size)
        return cls(
            worker_id=settings.worker_id or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=settings.worker_batch_size,
            block_ms=settings.worker_block_ms,
            default_size=default_size,
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            shutdown_grace_s=settings.shutdown_grace_s,
            partial_interval_s=settings.partial_interval_s,
            device=device or settings.device,
        )
