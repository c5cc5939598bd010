"""Logging for every rujokes process: plain text or one JSON object per line (LOG_FORMAT=json).

Structured fields travel as `extra={"fields": {...}}`: the JSON formatter makes them top-level keys,
so a request can be followed by its `request_id` through the bot's and the workers' logs.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, Iterable


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


REDACTED = "<redacted>"


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with every secret replaced: the bot token sits in the URL of every Bot API
    call, so a library's log line or a traceback (aiohttp's errors name the URL) could carry it."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        # Longest first: a token's secret half is replaced within the whole token, not before it.
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 8}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


def configure_logging(log_format: str, level: str, secrets: Iterable[str] = ()) -> None:
    """Log to stderr, for every logger (aiogram's, aiohttp's, redis's too), with `secrets` redacted."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(formatter, secrets))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_event(logger: logging.Logger, event: str, fields: dict[str, Any], *, level: int = logging.INFO,
              message: str = "", quote: bool = False, hidden: tuple[str, ...] = ()) -> None:
    """One structured line: `event key=value …[: message]` as text, every field a top-level key in JSON.

    quote=True writes values with repr (for user input such as command arguments); `hidden` fields go
    to JSON only (when the event text already says them).
    """
    shown = " ".join(f"{key}={value!r}" if quote else f"{key}={value}" for key, value in fields.items()
                     if key not in hidden)
    text = f"{event} {shown}".rstrip() + (f": {message}" if message else "")
    logger.log(level, text, extra={"fields": fields})


class Sparse:
    """A warning that an outage would repeat for every call (every message while Redis is away, say), logged at
    most once per `interval_s`, saying how many like it were left out since."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._last = float("-inf")
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        now = self.clock()
        if now - self._last < self.interval_s:
            self._left_out += 1
            return
        if self._left_out:
            message, args = message + " (and %d more like it since)", (*args, self._left_out)
        self.logger.warning(message, *args)
        self._last, self._left_out = now, 0
