"""Deployment settings, read from the environment or a `.env` file (names are case-insensitive).

This is the only place that reads the environment; everything else receives plain config objects
(`QueueConfig`, `WorkerConfig`) built from here.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.protocol import DEFAULT_PREFIX
from bot.queue import QueueConfig
from bot.worker import WorkerConfig

Size = Literal["nano", "mini", "small"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # -- Redis and the queue --
    redis_url: str = Field(
        "", description="Redis URL (redis://, rediss://, unix://). Empty: start an embedded Redis with AOF on."
    )
    redis_data_dir: Path = Field(
        Path("data/redis"), description="Where the embedded Redis keeps its AOF and dump (when REDIS_URL is empty)."
    )
    redis_prefix: str = Field(DEFAULT_PREFIX, description="Prefix of every Redis key and stream name.")
    max_queue: int = Field(100, ge=1, description="Outstanding requests above which new ones are refused as busy.")
    max_deliveries: int = Field(
        3, ge=1, description="A request delivered more often than this is dead-lettered and answered 'failed'."
    )
    claim_idle_ms: int = Field(
        30_000, ge=100, description="A claimed request idle this long is taken to belong to a dead worker and reclaimed."
    )
    stream_maxlen: int = Field(10_000, ge=100, description="Approximate cap of each stream (a safety net).")
    result_dedupe_ttl_s: int = Field(86_400, ge=1, description="How long the bot remembers a handled request id.")
    request_timeout_s: float = Field(
        60.0, gt=0, description="Seconds from submission to the request's deadline; later it is answered 'expired'."
    )

    # -- the worker --
    worker_id: str = Field("", description="Stable consumer name of this worker. Empty: '<hostname>-<pid>'.")
    worker_batch_size: int = Field(8, ge=1, description="Most requests generated together in one batch.")
    worker_block_ms: int = Field(1000, ge=1, description="How long an idle worker waits on Redis per poll.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long to let the current batch finish before handing it back."
    )
    partial_interval_s: float = Field(0.7, ge=0, description="Least seconds between two partial results of a request.")
    heartbeat_ttl_s: float = Field(15.0, gt=0, description="Lifetime of a worker's heartbeat key; refreshed at a third of it.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the worker runs the models.")
    model_nano: str = Field("bundled", description="Source of the nano model: 'bundled', a directory, or 'hub:owner/repo@revision'.")
    model_mini: str = Field("bundled", description="Source of the mini model: 'bundled', a directory, or 'hub:owner/repo@revision'.")
    model_small: str = Field("bundled", description="Source of the small model: 'bundled', a directory, or 'hub:owner/repo@revision'.")
    default_size: Size = Field("nano", description="Size used for 'active' requests until an admin switches it.")

    # -- logging --
    log_format: Literal["text", "json"] = Field("text", description="Log lines as plain text or one JSON object each.")
    log_level: str = Field("INFO", description="Python logging level name.")

    def model_sources(self) -> dict[str, str]:
        return {"nano": self.model_nano, "mini": self.model_mini, "small": self.model_small}

    def queue_config(self) -> QueueConfig:
        return QueueConfig(
            prefix=self.redis_prefix,
            max_queue=self.max_queue,
            max_deliveries=self.max_deliveries,
            claim_idle_ms=self.claim_idle_ms,
            stream_maxlen=self.stream_maxlen,
            dedupe_ttl_s=self.result_dedupe_ttl_s,
        )

    def worker_config(self, device: str | None = None) -> WorkerConfig:
        """`device` is what the engine actually picked (auto resolves to cpu or cuda)."""
        return WorkerConfig(
            worker_id=self.worker_id or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=self.worker_batch_size,
            block_ms=self.worker_block_ms,
            default_size=self.default_size,
            heartbeat_ttl_s=self.heartbeat_ttl_s,
            shutdown_grace_s=self.shutdown_grace_s,
            partial_interval_s=self.partial_interval_s,
            device=device or self.device,
        )
