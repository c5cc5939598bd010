"""Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint, shared by the worker and the bot.

Every metric lives in a `CollectorRegistry` the caller creates and passes in (never the global
default registry), so two processes' worth of metrics can coexist in one test and nothing is
registered as an import side effect.

The HTTP server is the standard library's, in a daemon thread: it keeps answering while the
asyncio loop is blocked, which is exactly when `/healthz` must be able to say "unhealthy".
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.queue.protocol import ACTIVE_SIZE, CONCRETE_SIZES

log = logging.getLogger(__name__)

NAMESPACE = "rujokes"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Tiny models on a GPU answer in tens of milliseconds; `small` on a CPU takes tens of seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

HealthCheck = Callable[[], dict[str, Any]]


class Metrics:
    """Every metric the bot and the workers export. Each process fills the ones that concern it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # -- requests and the queue --
        self.requests = Counter(
            "requests", "Joke requests by kind (command, inline, more, …; 'unknown' when answered by the queue "
            "itself), size and outcome. Workers count what they answered (ok, expired, failed, unknown_size); "
            "the bot counts what it accepted (accepted) or refused at once (busy, rate_limited, too_long, "
            "workers_down), updates Telegram re-delivered after they were handled (duplicate) and, per "
            "request, what it finally showed (ok, empty, expired, failed, no_answer, "
            "undelivered, late).",
            ["kind", "size", "outcome"], namespace=NAMESPACE, registry=registry)
        self.queue_length = Gauge(
            "queue_length", "Outstanding requests (queued plus in flight) at the last look.",
            namespace=NAMESPACE, registry=registry)
        self.queue_lag = Gauge(
            "queue_lag_seconds", "How long the oldest request of the last claimed batch waited before a worker "
            "took it.", namespace=NAMESPACE, registry=registry)
        # -- generation --
        self.batch_size = Histogram(
            "batch_size", "Requests generated together in one engine call.", ["size"],
            buckets=BATCH_SIZE_BUCKETS, namespace=NAMESPACE, registry=registry)
        self.generation_seconds = Histogram(
            "generation_seconds", "Wall time of one engine call (one batch).", ["size"],
            buckets=LATENCY_BUCKETS, namespace=NAMESPACE, registry=registry)
        self.request_latency = Histogram(
            "request_latency_seconds", "From a request's creation to its final answer.", ["size"],
            buckets=LATENCY_BUCKETS, namespace=NAMESPACE, registry=registry)
        self.reply_latency = Histogram(
            "reply_latency_seconds", "Bot: from the update that asked for a joke to the finished joke shown "
            "to the user.", ["kind", "size"], buckets=LATENCY_BUCKETS, namespace=NAMESPACE, registry=registry)
        self.generated_tokens = Counter(
            "generated_tokens", "Tokens generated (prompt tokens not counted).", ["size"],
            namespace=NAMESPACE, registry=registry)
        self.cut_jokes = Counter(
            "cut_jokes", "Jokes that ran into their token limit (each ends after its last whole sentence): many "
            "against rujokes_requests_total say MAX_NEW_TOKENS is short for the model.", ["size"],
            namespace=NAMESPACE, registry=registry)
        self.tokens_per_second = Gauge(
            "tokens_per_second", "Generated tokens per second of the last batch, all its rows together.",
            ["size"], namespace=NAMESPACE, registry=registry)
        # -- users and Telegram --
        self.votes = Counter(
            "votes", "Votes on delivered jokes by size and vote (up, down).", ["size", "vote"],
            namespace=NAMESPACE, registry=registry)
        self.telegram_errors = Counter(
            "telegram_errors", "Failed Bot API calls by method and error code.", ["method", "code"],
            namespace=NAMESPACE, registry=registry)
        self.telegram_retry_afters = Counter(
            "telegram_retry_afters", "Bot API calls answered 429 with retry_after (flood control), by method.",
            ["method"], namespace=NAMESPACE, registry=registry)

    # Helpers, so call sites read as one line of intent.

    def request_event(self, kind: str, size: str | None, outcome: str) -> None:
        """A request reached `outcome` (accepted, refused at once, answered, shown)."""
        self.requests.labels(kind=kind or "unknown", size=_size_label(size), outcome=outcome).inc()

    def request_finished(self, kind: str, size: str | None, outcome: str, latency_s: float | None = None) -> None:
        """Worker: a request answered."""
        self.request_event(kind, size, outcome)
        if latency_s is not None and outcome == "ok":
            self.request_latency.labels(size=_size_label(size)).observe(latency_s)

    def reply_shown(self, kind: str, size: str | None, outcome: str, latency_s: float | None = None) -> None:
        """Bot: a request's final answer shown to the user (or given up on); latency from its update."""
        self.request_event(kind, size, outcome)
        if latency_s is not None and outcome == "ok":
            self.reply_latency.labels(kind=kind or "unknown", size=_size_label(size)).observe(latency_s)

    def batch_generated(self, size: str, batch_size: int, seconds: float, tokens: int, cut: int = 0) -> None:
        """Worker: one engine call done; `cut`: its jokes that ran into their token limit."""
        self.batch_size.labels(size=size).observe(batch_size)
        self.generation_seconds.labels(size=size).observe(seconds)
        self.generated_tokens.labels(size=size).inc(tokens)
        self.cut_jokes.labels(size=size).inc(cut)
        if seconds > 0:
            self.tokens_per_second.labels(size=size).set(tokens / seconds)

    def vote(self, size: str | None, vote: str) -> None:
        self.votes.labels(size=size if size in CONCRETE_SIZES else "unknown", vote=vote).inc()

    def telegram_error(self, method: str, code: int | str) -> None:
        self.telegram_errors.labels(method=method, code=str(code)).inc()

    def telegram_retry_after(self, method: str) -> None:
        self.telegram_retry_afters.labels(method=method).inc()


def _size_label(size: str | None) -> str:
    # A size comes from the request: bound the label values so odd input cannot grow the series.
    if not size:
        return "unknown"
    return size if size in CONCRETE_SIZES or size == ACTIVE_SIZE else "other"


# -- the HTTP endpoint ------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running `/metrics` + `/healthz` server; `stop()` closes it."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_http_server(registry: CollectorRegistry, host: str, port: int, health: HealthCheck) -> MetricsServer:
    """Serve `/metrics` (Prometheus text format) and `/healthz` (JSON) in a background thread.

    `health()` returns a dict with a boolean "healthy" key (anything else is passed through);
    `/healthz` answers 200 when it is true, 503 when false or when the check itself raises.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                try:
                    report = dict(health())
                except Exception as error:  # a broken check is an unhealthy process, not a 500
                    log.exception("health check failed")
                    report = {"healthy": False, "error": repr(error)}
                status = 200 if report.get("healthy") else 503
                body = json.dumps(report, ensure_ascii=False, default=str).encode()
                self._send(status, "application/json; charset=utf-8", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep logs quiet
            log.debug("%s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # A short poll interval: stop() (shutdown) waits for the serving loop to notice, up to that long.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http",
                              daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", host, server.server_address[1])
    return MetricsServer(server, thread)
