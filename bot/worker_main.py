"""`rujokes-worker`: read Settings, load the models, serve the Redis queue until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

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


async def serve(settings: Settings) -> Worker:
    from bot.engine import build_engine  # lazy: pulls in torch and the models

    started = time.monotonic()
    engine = build_engine(settings)
    log.info("engine ready in %.1fs with sizes %s", time.monotonic() - started, engine.available_sizes())
    url, stop_redis = settings.redis_url, None
    if not url:  # stopped explicitly below: main() may leave through os._exit, which skips atexit
        url, stop_redis = start_embedded_redis(settings.redis_data_dir)
    redis = connect(url)
    try:
        device = str(getattr(engine, "device", settings.device))  # the engine knows what "auto" became
        worker = Worker(RequestQueue(redis, settings.queue_config()), engine, settings.worker_config(device))
        worker.install_signal_handlers()
        await worker.run()
        return worker
    finally:
        await redis.aclose()
        if stop_redis is not None:
            stop_redis()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    worker = asyncio.run(serve(settings))
    if worker.abandoned:
        # The engine thread is still generating a batch that was handed back; don't wait for it.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
