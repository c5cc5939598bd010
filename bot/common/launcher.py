"""`rujokes run`: the whole stack from one command and `.env`.

Starts an embedded Redis when REDIS_URL is empty, then `rujokes-worker` and, once a worker beats,
`rujokes-bot` as child processes pointed at it (a /joke sent while the models load waits at Telegram
for the bot instead of being refused for want of a worker). SIGINT/SIGTERM are passed on to the
children; when one child exits the others are stopped too, and Redis goes last (after the children
flushed their work to it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from redis.exceptions import RedisError

from bot.common.bot_token import TOKEN_HELP, token_problem
from bot.common.logs import configure_logging
from bot.common.settings import load_settings
from bot.queue.config import QueueConfig
from bot.queue.connection import connect, start_embedded_redis
from bot.queue.registry import WorkerRegistry

log = logging.getLogger("bot.common.launcher")
# Loading the models (and a first build of the CPU kernels) takes seconds; a Hub download may take minutes.
WORKER_START_TIMEOUT_S = 600.0


def _start(name: str, module: str, env: dict[str, str]) -> subprocess.Popen:
    # `python -m` rather than the console scripts: works without an activated virtualenv.
    process = subprocess.Popen([sys.executable, "-m", module], env=env)
    log.info("started %s (pid %d)", name, process.pid)
    return process


def _stop_all(children: dict[str, subprocess.Popen], grace_s: float) -> None:
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for name, process in children.items():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", name, grace_s)
            process.kill()
            process.wait()


async def _wait_for_a_worker(url: str, config: QueueConfig, worker: subprocess.Popen, timeout_s: float) -> None:
    """Until a worker is alive (this one or another; the registry's own test), the worker exits, or `timeout_s`."""
    client = connect(url)
    registry = WorkerRegistry(client, config)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                if await registry.live_workers():
                    return
            except RedisError:
                pass  # an external Redis still starting: keep waiting
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    if worker.poll() is None:
        log.warning("no worker heartbeat within %.0fs; starting the bot anyway", timeout_s)


def run_stack(with_bot: bool = True) -> int:
    settings = load_settings("rujokes run")
    configure_logging(settings.log_format, settings.log_level, settings.secret_values())
    if with_bot:
        problem = token_problem(settings.bot_token.get_secret_value())
        if problem:  # before Redis and the models load: fail fast
            print(f"rujokes run: {problem}\n{TOKEN_HELP}", file=sys.stderr)
            return 2

    url, stop_redis = settings.redis_url, None
    if not url:
        url, stop_redis = start_embedded_redis(settings.redis_data_dir)
        log.info("embedded Redis at %s (data in %s)", url, settings.redis_data_dir)
    env = {**os.environ, "REDIS_URL": url}
    children: dict[str, subprocess.Popen] = {}
    stopping: list[int] = []

    def forward(signum: int, _: FrameType | None) -> None:
        stopping.append(signum)
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        children["worker"] = _start("worker", "bot.worker.main", env)
        if with_bot:
            asyncio.run(_wait_for_a_worker(url, settings.queue_config(), children["worker"],
                                           WORKER_START_TIMEOUT_S))
            if children["worker"].poll() is None and not stopping:
                children["bot"] = _start("bot", "bot.telegram.main", env)
        while not stopping:
            exited = {name: p.returncode for name, p in children.items() if p.poll() is not None}
            if exited:
                name, exit_code = next(iter(exited.items()))
                log.error("%s exited with %s; stopping the stack", name, exit_code)
                break
            time.sleep(0.2)
    finally:
        _stop_all(children, max(settings.shutdown_grace_s, settings.bot_shutdown_timeout_s) + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_redis is not None:
            stop_redis()
    return exit_code
