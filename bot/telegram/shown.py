"""The one line (and metric) per request that says what its user finally saw: a joke, an apology, nothing."""
from __future__ import annotations

import logging

from bot.common.logs import log_event
from bot.common.metrics import Metrics

log = logging.getLogger(__name__)


def report_shown(metrics: Metrics, request_id: str, kind: str, size: str | None, status: str | None, outcome: str,
                 latency_s: float | None) -> None:
    """`outcome`: ok, empty, expired, failed, no_answer, undelivered, late…; latency from the update that asked."""
    metrics.reply_shown(kind, size, outcome, latency_s)
    fields = {"request_id": request_id, "status": status, "outcome": outcome, "size": size,
              "latency_s": None if latency_s is None else round(latency_s, 3), "kind": kind}
    log_event(log, "delivered", fields)
