"""`rujokes run`: the whole stack from one command and `.env`.

Starts an embedded Redis when REDIS_URL is empty, then `rujokes-worker` and `rujokes-bot` as child processes
pointed at it, both at once: the bot imports and builds everything while the models load, then waits for a
worker's heartbeat before it takes updates (a /joke sent meanwhile waits at Telegram instead of being
refused for want of a worker). STANDBY_BOTS hot standbys (bot/telegram/lease.py) follow once a worker
beats. A child that exits is started again (bot/common/supervisor.py): a killed bot's standby serves
meanwhile, and the restarted one becomes the next standby. SIGINT/SIGTERM are passed on to the children,
and Redis goes last (after the children flushed their work to it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from types import FrameType

from redis.exceptions import RedisError

from bot.common.bot_token import TOKEN_HELP, token_problem
from bot.common.logs import configure_logging
from bot.common.settings import Settings, load_settings
from bot.common.supervisor import Supervisor, module_command
from bot.queue.connection import connect, start_embedded_redis
from bot.queue.registry import WorkerRegistry

log = logging.getLogger("bot.common.launcher")
# Loading the models (and a first build of the CPU kernels) takes seconds; a Hub download may take minutes.
WORKER_START_TIMEOUT_S = 600.0


def bot_names(standbys: int) -> list[str]:
    return ["bot"] if standbys == 0 else [f"bot-{i}" for i in range(1, standbys + 2)]


async def _a_worker_beats(registry: WorkerRegistry) -> bool:
    try:
        return bool(await registry.live_workers())  # this worker or another: the registry's own test
    except RedisError:
        return False  # an external Redis still starting: keep waiting


async def _supervise(supervisor: Supervisor, settings: Settings, url: str, with_bot: bool) -> int:
    """Until a signal (0) or a child's exit that stops the stack (its code). The serving bot starts beside the
    worker and waits up to WORKER_START_TIMEOUT_S for its heartbeat; the standbys start once one beat (on a
    small machine a third process importing at once would slow the other two), and from then on a bot started
    again serves at once (it may be the only one left, workers or not)."""
    supervisor.start("worker", module_command("bot.worker.main"))
    bots = bot_names(settings.standby_bots) if with_bot else []
    if bots:
        supervisor.start(bots[0], [*module_command("bot.telegram.main"), "--await-worker-s",
                                   str(WORKER_START_TIMEOUT_S)])
    client = connect(url)
    registry = WorkerRegistry(client, settings.queue_config())
    awaiting, deadline = bool(bots), time.monotonic() + WORKER_START_TIMEOUT_S
    try:
        while not supervisor.stopping:
            if (code := supervisor.check()) is not None:
                return code
            if awaiting and (await _a_worker_beats(registry) or time.monotonic() >= deadline):
                supervisor.restart_with(bots[0], module_command("bot.telegram.main"))
                for name in bots[1:]:
                    supervisor.start(name, module_command("bot.telegram.main"))
                awaiting = False
            await asyncio.sleep(0.2)
        return 0
    finally:
        await client.aclose()


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
    supervisor = Supervisor({**os.environ, "REDIS_URL": url})

    def forward(signum: int, _: FrameType | None) -> None:
        supervisor.request_stop(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return asyncio.run(_supervise(supervisor, settings, url, with_bot))
    finally:
        supervisor.stop_all(max(settings.shutdown_grace_s, settings.bot_shutdown_timeout_s) + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_redis is not None:
            stop_redis()
