"""`rujokes-worker`: read Settings, load the models, serve the Redis queue until SIGTERM/SIGINT.

With WORKER_METRICS_PORT set, the worker also serves `/metrics` (Prometheus) and `/healthz` (JSON)
on that port, on all interfaces. That variable is read here, in `main()`, until it moves into Settings.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

from prometheus_client import CollectorRegistry

from bot.metrics import Metrics, start_http_server
from bot.queue import RequestQueue
from bot.redis_connection import connect, start_embedded_redis
from bot.settings import Settings
from bot.worker import Worker

log = logging.getLogger("bot.worker_main")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured `extra={"fields": {...}}` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# /healthz turns 503 when the claim loop or Redis has been silent this long (a batch included).
HEALTH_STALE_S = 60.0


async def serve(settings: Settings, metrics_port: int | None = None, metrics_host: str = "0.0.0.0",
                health_stale_s: float = HEALTH_STALE_S) -> Worker:
    """Serve until stopped. `metrics_port` (0: any free port) starts the `/metrics` + `/healthz` server."""
    from bot.engine import build_engine  # lazy: pulls in torch and the models

    worker: Worker | None = None
    metrics, server = None, None
    if metrics_port is not None:  # before the models load, so /healthz says "loading" instead of nothing
        metrics = Metrics(CollectorRegistry())
        server = start_http_server(
            metrics.registry, metrics_host, metrics_port,
            lambda: worker.health(health_stale_s) if worker is not None else {"healthy": False, "status": "loading"},
        )
    try:
        started = time.monotonic()
        engine = build_engine(settings)
        log.info("engine ready in %.1fs with sizes %s", time.monotonic() - started, engine.available_sizes())
        url, stop_redis = settings.redis_url, None
        if not url:  # stopped explicitly below: main() may leave through os._exit, which skips atexit
            url, stop_redis = start_embedded_redis(settings.redis_data_dir)
        redis = connect(url)
        try:
            device = str(getattr(engine, "device", settings.device))  # the engine knows what "auto" became
            worker = Worker(RequestQueue(redis, settings.queue_config()), engine, settings.worker_config(device),
                            metrics)
            worker.install_signal_handlers()
            await worker.run()
            return worker
        finally:
            await redis.aclose()
            if stop_redis is not None:
                stop_redis()
    finally:
        if server is not None:
            server.stop()


def metrics_port_from_env() -> int | None:
    """WORKER_METRICS_PORT, until it becomes a Settings field. Empty or unset: no metrics server."""
    value = os.environ.get("WORKER_METRICS_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        sys.exit(f"rujokes-worker: WORKER_METRICS_PORT must be a port number, not {value!r}")
    return int(value)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    worker = asyncio.run(serve(settings, metrics_port=metrics_port_from_env()))
    if worker.abandoned:
        # The engine thread is still generating a batch that was handed back; don't wait for it.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
