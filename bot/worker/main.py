"""`rujokes-worker`: read Settings, load the models, serve the Redis queue until SIGTERM/SIGINT.

With WORKER_METRICS_PORT set, the worker also serves `/metrics` (Prometheus) and `/healthz` (JSON)
on that port, on METRICS_HOST (all interfaces by default).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from prometheus_client import CollectorRegistry

from bot.common.logs import configure_logging
from bot.common.metrics import Metrics, start_http_server
from bot.common.settings import Settings, load_settings
from bot.queue.client import RequestQueue
from bot.queue.connection import connect, start_embedded_redis
from bot.worker.config import WorkerConfig
from bot.worker.loop import Worker

log = logging.getLogger("bot.worker.main")


async def serve(settings: Settings) -> Worker:
    """Serve until stopped. WORKER_METRICS_PORT (0: any free port) starts the `/metrics` + `/healthz` server."""
    from bot.worker.loading import build_engine  # lazy: pulls in torch and the models

    worker: Worker | None = None
    metrics, server = None, None
    if settings.worker_metrics_port is not None:  # before the models load: /healthz says "loading", not nothing
        metrics = Metrics(CollectorRegistry())
        stale_s = settings.worker_health_stale_s
        server = start_http_server(
            metrics.registry, settings.metrics_host, settings.worker_metrics_port,
            lambda: worker.health(stale_s) if worker is not None else {"healthy": False, "status": "loading"},
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
            worker = Worker(RequestQueue(redis, settings.queue_config()), engine,
                            WorkerConfig.from_settings(settings, device, engine.available_sizes()), metrics)
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


def main() -> None:
    from bot.worker.loading import CannotServe

    settings = load_settings("rujokes-worker")
    configure_logging(settings.log_format, settings.log_level, settings.secret_values())
    try:
        worker = asyncio.run(serve(settings))
    except CannotServe as error:  # a configuration error: said in one line, and no restart would help
        log.error("cannot serve: %s", error)
        sys.exit(2)
    if worker.abandoned:
        # The engine thread is still generating a batch that was handed back; don't wait for it.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
