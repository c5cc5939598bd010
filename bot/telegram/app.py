"""Assemble the bot: Bot (session, middlewares), services on Redis, Dispatcher with the feature
routers, and run it by long polling (default) or as a webhook server.

Everything a handler needs is injected through the Dispatcher's keyword arguments (`settings`, `queue`,
`jokes`, `feedback`, `outstanding`, `chat_settings`, `metrics`, `signer`, `daily`, `user_stats`, `access`,
`audit`, `broadcasts`): handlers name what they use in
their signature.
With BOT_METRICS_PORT set, `/metrics` and `/healthz` are served from a background thread.

Only the process that holds the Telegram lease in Redis serves (bot/telegram/lease.py); another one started
with the same settings waits, everything built, as a hot standby, and takes over when the lease lapses.

SIGTERM/SIGINT start a bounded shutdown (bot/common/shutdown.py), in stages that each log their start, end
and duration: stop taking updates (`polling` or `webhook`) and replaying them (`inbox`), let the updates
in hand finish (`updates`), stop scheduling daily jokes (`daily`) and pause broadcasts (`broadcasts`), stop
reading results (`results_reader`), let deliveries in progress finish (`delivery`), then close the metrics
server, release the lease (`lease`: a standby takes over now), and close Redis and the Telegram session.
The whole takes at most BOT_SHUTDOWN_TIMEOUT_S; a stage that overruns its share is cancelled with a
warning. Nothing accepted is lost that way: a result is acked only once shown, so one cut short is re-read
after a restart. Should even that not end the process (a blocked event loop),
a watchdog exits with code 1 WATCHDOG_MARGIN_S later.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import secrets
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramServerError, TelegramUnauthorizedError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.backoff import BackoffConfig
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.common.metrics import Metrics, MetricsServer, start_http_server
from bot.common.settings import Settings
from bot.common.shutdown import Stage, run_stages, start_watchdog
from bot.common.tasks import cancel_and_wait
from bot.queue.client import RequestQueue
from bot.queue.results import ResultReader
from bot.telegram import texts
from bot.telegram.access import AccessControl, AccessList
from bot.telegram.audit import AuditLog
from bot.telegram.broadcast import Broadcasts
from bot.telegram.chat_settings import ChatSettingsStore
from bot.telegram.daily import DailyJokes
from bot.telegram.delivery import DeliveryLoop
from bot.telegram.feedback import FeedbackStore
from bot.telegram.handlers import broadcast as broadcast_handlers
from bot.telegram.handlers import feature_routers
from bot.telegram.inbox import UpdateInbox
from bot.telegram.jokes import JokeService
from bot.telegram.lease import BotLease
from bot.telegram.middlewares import FloodControl, GroupPacing, InFlightUpdates, UserLanguage
from bot.telegram.notices import Notices
from bot.telegram.outbox import Outbox
from bot.telegram.outstanding import OutstandingRequests
from bot.telegram.ratelimit import ChatPacer, UserRateLimiter, global_pacer
from bot.telegram.signing import Signer
from bot.telegram.user_stats import UserStatsStore
from bot.telegram.waiters import InlineWaiters

log = logging.getLogger(__name__)
T = TypeVar("T")

# Inline queries come once per typing pause, so they get a roomier bucket than /joke.
INLINE_RATE_FACTOR = 3
# /healthz turns 503 when the delivery loop (it goes round every second) or Redis has been silent this long.
HEALTH_STALE_S = 30.0
# Relative shares of BOT_SHUTDOWN_TIMEOUT_S per shutdown stage; time a stage leaves unused passes on
# to the later ones (see bot/common/shutdown.py).
# results_reader only cancels a blocked XREADGROUP, but on a loaded machine redis-py's unwinding of that
# read can outlast a small share (BENCHMARKS.md, "Figures behind code comments"): it gets 0.15.
STAGE_SHARES = {"receiver": 0.15, "inbox": 0.025, "updates": 0.125, "daily": 0.025, "broadcasts": 0.025,
                "results_reader": 0.15,
                "delivery": 0.2, "metrics": 0.075, "lease": 0.05, "redis": 0.1, "session": 0.075}
# The longest pause between two tries to reach Telegram at start-up.
MAX_STARTUP_PAUSE_S = 30.0
# Past a daily post's request deadline and grace, before its next attempt may start.
DAILY_LEASE_MARGIN_S = 15.0
# After the shutdown's budget, this much longer before the watchdog ends the process regardless.
WATCHDOG_MARGIN_S = 5.0
# An update is a few KiB (a 4096-character message with its reply is under 64 KiB); aiohttp's default is 1 MiB.
WEBHOOK_MAX_BODY_BYTES = 256 * 1024


def build_bot(settings: Settings, pacer: ChatPacer, metrics: Metrics, everywhere: ChatPacer | None = None) -> Bot:
    api = settings.telegram_api_base.rstrip("/")
    timeout = settings.telegram_timeout_s
    session = (AiohttpSession(api=TelegramAPIServer.from_base(api), timeout=timeout) if api
               else AiohttpSession(timeout=timeout))
    session.middleware(FloodControl(metrics))
    session.middleware(GroupPacing(pacer, everywhere))
    # No default parse_mode: every text goes out plain, so model output is never parsed as markup.
    return Bot(settings.bot_token.get_secret_value(), session=session,
               default=DefaultBotProperties(link_preview_is_disabled=True))


@dataclass
class Services:
    redis: Redis
    queue: RequestQueue
    feedback: FeedbackStore
    outstanding: OutstandingRequests
    chat_settings: ChatSettingsStore
    jokes: JokeService
    delivery: DeliveryLoop
    metrics: Metrics
    signer: Signer
    daily: DailyJokes
    user_stats: UserStatsStore
    access: AccessList
    audit: AuditLog
    broadcasts: Broadcasts


def build_services(settings: Settings, redis: Redis, bot: Bot, metrics: Metrics) -> Services:
    prefix = settings.redis_prefix
    queue = RequestQueue(redis, settings.queue_config())
    feedback = FeedbackStore(redis, prefix)
    outstanding = OutstandingRequests(redis, prefix)
    outbox = Outbox(bot)
    waiters = InlineWaiters()
    limiter = UserRateLimiter(redis, prefix, settings.rate_limit_per_minute, settings.rate_limit_burst)
    inline_limiter = UserRateLimiter(redis, f"{prefix}inline:", settings.rate_limit_per_minute * INLINE_RATE_FACTOR,
                                     settings.rate_limit_burst * INLINE_RATE_FACTOR)
    chat_settings = ChatSettingsStore(redis, prefix, settings)
    notices = Notices(redis, prefix, outbox)
    user_stats = UserStatsStore(redis, prefix)
    jokes = JokeService(settings, queue, outstanding, limiter, inline_limiter, feedback, outbox, waiters, metrics,
                        chat_settings, notices, user_stats)
    reader = ResultReader(redis, settings.queue_config())
    signer = Signer.from_settings(settings)
    # An attempt at a daily post is given up on like any request (deadline + grace), then tried again.
    lease_s = settings.request_timeout_s + settings.result_grace_s + DAILY_LEASE_MARGIN_S
    daily = DailyJokes(redis, prefix, lease_s=lease_s, check_interval_s=settings.daily_check_interval_s)
    delivery = DeliveryLoop(reader, outstanding, feedback, outbox, waiters, metrics, signer, daily,
                            settings.edit_interval_s, retry_s=settings.delivery_retry_s, resubmit=queue.submit)
    return Services(redis, queue, feedback, outstanding, chat_settings, jokes, delivery, metrics, signer, daily,
                    user_stats, AccessList(redis, prefix, settings), AuditLog(redis, prefix),
                    Broadcasts(redis, prefix, settings.broadcast_per_second))


def build_dispatcher(settings: Settings, services: Services) -> Dispatcher:
    # No FSM: the bot keeps its state in Redis, and aiogram's in-memory FSM storage would keep a record for
    # every (chat, user) it ever saw (it reads each update's state into a defaultdict): RSS growing with users.
    dispatcher = Dispatcher(disable_fsm=True, settings=settings, queue=services.queue, feedback=services.feedback,
                            outstanding=services.outstanding, chat_settings=services.chat_settings,
                            jokes=services.jokes, metrics=services.metrics, signer=services.signer,
                            daily=services.daily, user_stats=services.user_stats, access=services.access,
                            audit=services.audit, broadcasts=services.broadcasts)
    dispatcher.include_routers(*feature_routers())
    dispatcher.update.outer_middleware(UserLanguage())  # after aiogram's own, which finds the user
    dispatcher.update.outer_middleware(AccessControl(services.access))  # needs the language

    async def on_startup(bot: Bot) -> None:
        await set_commands(bot, settings)
        services.delivery.start()
        services.daily.start(services.jokes.daily_joke)
        await services.broadcasts.resume(*broadcast_handlers.runner_callbacks(bot))
        me = await bot.me()
        log.info("bot @%s started; admins %s", me.username, settings.admin_ids)

    # No shutdown hook: `run` stops everything itself, stage by stage, within a time limit.
    dispatcher.startup.register(on_startup)
    return dispatcher


async def set_commands(bot: Bot, settings: Settings) -> None:
    """The command menu; admins also see the admin commands in their private chat with the bot.

    A menu Telegram refuses or cannot take now (5xx, a dropped connection) is logged and left as it was: it
    is cosmetic, and a bot that died of it would answer nobody. A rejected token still ends the bot.
    """
    for t in (texts.RU, texts.EN):
        # Russian for everyone (no language_code); English for clients set to English (Telegram picks).
        language = None if t is texts.RU else t.language
        public = [BotCommand(command=name, description=t.command(name)) for name in texts.COMMAND_NAMES]
        admin = public + [BotCommand(command=name, description=t.command(name)) for name in texts.ADMIN_COMMAND_NAMES]
        scopes = [("public", public, BotCommandScopeDefault())]
        scopes += [(f"admin {admin_id}", admin, BotCommandScopeChat(chat_id=admin_id))
                   for admin_id in settings.admin_ids]
        for name, commands, scope in scopes:
            try:
                await bot.set_my_commands(commands, scope=scope, language_code=language)
            except TelegramUnauthorizedError:
                raise
            except TelegramAPIError as error:  # e.g. the admin never opened a chat with the bot; Telegram's trouble
                log.warning("%s command menu (%s) not set: %s", name, t.language, error)


async def until_telegram_answers(what: str, call: Callable[[], Awaitable[T]], first_pause_s: float = 1.0) -> T:
    """`call()`, tried again while Telegram has trouble (5xx, a failed connection), with a growing pause: a bot
    that starts during an outage waits for Telegram instead of exiting. Anything else (a rejected token) raises."""
    pause = first_pause_s
    while True:
        try:
            return await call()
        except (TelegramServerError, TelegramNetworkError) as error:
            log.warning("%s: Telegram unavailable (%s); trying again in %.0fs", what, error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_STARTUP_PAUSE_S)


# How often getUpdates is tried again while Telegram fails. aiogram's default grows to 5 s, so the jokes asked
# during an outage reached the bot up to 5 s after it; one failing getUpdates every 2 s costs nothing.
POLLING_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=2.0, factor=1.5, jitter=0.1)


class Polling:
    """Long polling; `stop` is aiogram's own (it ends getUpdates and its polling tasks)."""

    name = "polling"

    def __init__(self, bot: Bot, dispatcher: Dispatcher) -> None:
        self.bot, self.dispatcher = bot, dispatcher

    async def serve(self) -> None:
        # A webhook left over from an earlier deployment would make getUpdates fail with 409.
        await until_telegram_answers("deleteWebhook", lambda: self.bot.delete_webhook(drop_pending_updates=False))
        await until_telegram_answers("getMe", self.bot.me)  # cached: start_polling's own getMe is then local
        await self.dispatcher.start_polling(self.bot, polling_timeout=25, handle_signals=False,
                                            close_bot_session=False, backoff_config=POLLING_BACKOFF)

    async def stop(self, serving: asyncio.Task) -> None:
        try:
            if not serving.done():
                try:
                    await self.dispatcher.stop_polling()
                except RuntimeError:  # "Polling is not started": still starting up
                    await cancel_and_wait(serving)
            await asyncio.gather(serving, return_exceptions=True)
        finally:
            serving.cancel()  # a no-op once it has returned


def webhook_handler(dispatcher: Dispatcher, bot: Bot, secret: str, inbox: UpdateInbox | None = None) -> Any:
    """aiogram's handler, with the secret compared as bytes: its str comparison raises on a header with
    non-ASCII characters (a 500 and a traceback per probe instead of a quiet 401); an update is kept in the
    inbox before Telegram hears 200 and forgets it."""
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler

    class Handler(SimpleRequestHandler):
        def verify_secret(self, telegram_secret_token: str, bot: Bot) -> bool:
            sent = telegram_secret_token.encode("utf-8", "surrogateescape")  # whatever str aiohttp made of it
            return hmac.compare_digest(sent, secret.encode())  # constant time, before the body is read

        async def handle(self, request: web.Request) -> web.Response:
            if inbox is not None and self.verify_secret(request.headers.get("X-Telegram-Bot-Api-Secret-Token", ""),
                                                        bot):
                with suppress(ValueError):  # not JSON: aiogram answers it
                    await inbox.keep_raw(await request.json(loads=bot.session.json_loads))  # the body is cached
            return await super().handle(request)

    return Handler(dispatcher, bot, secret_token=secret)


class Webhook:
    """An aiohttp server that Telegram posts updates to, with the secret it was registered with."""

    name = "webhook"

    def __init__(self, bot: Bot, dispatcher: Dispatcher, settings: Settings, inbox: UpdateInbox | None = None) -> None:
        from aiogram.webhook.aiohttp_server import setup_application

        self.bot, self.dispatcher, self.settings = bot, dispatcher, settings
        # Telegram sends this secret in X-Telegram-Bot-Api-Secret-Token; requests without it get 401.
        self.secret = settings.webhook_secret or secrets.token_urlsafe(32)
        # A body past the limit is refused with 413 while it is read, before any JSON parsing.
        app = web.Application(client_max_size=WEBHOOK_MAX_BODY_BYTES)
        webhook_handler(dispatcher, bot, self.secret, inbox).register(app, path=settings.webhook_path)
        setup_application(app, dispatcher, bot=bot)
        app.on_startup.append(self._register_webhook)
        self.runner = web.AppRunner(app, access_log=None)

    async def _register_webhook(self, _: web.Application) -> None:
        settings = self.settings
        updates = self.dispatcher.resolve_used_update_types()
        await until_telegram_answers("setWebhook", lambda: self.bot.set_webhook(
            settings.webhook_url, secret_token=self.secret, allowed_updates=updates))
        log.info("webhook %s registered; listening on %s:%s%s", settings.webhook_url, settings.webhook_host,
                 settings.webhook_port, settings.webhook_path)

    async def serve(self) -> None:
        await self.runner.setup()  # runs the startup hooks
        await web.TCPSite(self.runner, self.settings.webhook_host, self.settings.webhook_port).start()
        await asyncio.Event().wait()  # until cancelled

    async def stop(self, serving: asyncio.Task) -> None:
        await cancel_and_wait(serving)
        await self.runner.cleanup()


def start_metrics_server(settings: Settings, services: Services, lease: BotLease,
                         serving: Callable[[], bool]) -> MetricsServer | None:
    """`/metrics` + `/healthz` on BOT_METRICS_PORT; None when it is not set, or taken (logged: a standby on the
    active bot's host tries again when it takes over). A standby (`serving()` False) is healthy while Redis answers
    its lease checks: it is ready to take over."""
    if settings.bot_metrics_port is None:
        return None

    def health() -> dict[str, Any]:
        if serving():
            return {**services.delivery.health(HEALTH_STALE_S), "role": "active"}
        age = None if lease.redis_ok_at is None else round(time.monotonic() - lease.redis_ok_at, 3)
        return {"healthy": age is not None and age <= HEALTH_STALE_S, "role": "standby", "redis_ok_age_s": age}

    try:
        return start_http_server(services.metrics.registry, settings.metrics_host, settings.bot_metrics_port, health)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        log.warning("BOT_METRICS_PORT %s is taken (the active bot on this host?): no /metrics or /healthz for now",
                    settings.bot_metrics_port)
        return None


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def requested(sig: signal.Signals) -> None:
        log.info("received %s; shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, requested, sig)
    return stop


async def await_worker(queue: RequestQueue, stop: asyncio.Event, timeout_s: float) -> None:
    """Until a worker beats, `stop` is set or `timeout_s` passed. `rujokes run` starts its bots beside the
    worker and asks them to wait: a /joke sent while the models load then waits at Telegram for the bot,
    rather than being refused for want of a worker."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        with suppress(RedisError):  # an external Redis still starting: keep waiting
            if await queue.live_workers():
                log.info("a worker beats; taking Telegram updates")
                return
        if time.monotonic() >= deadline:
            log.warning("no worker heartbeat within %.0fs; taking Telegram updates anyway", timeout_s)
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def run(settings: Settings, redis: Redis, await_worker_s: float = 0.0) -> None:
    """Serve once this process holds the Telegram lease (bot/telegram/lease.py; until then it is a standby) until
    SIGTERM/SIGINT or the lease is lost, then shut down within settings.bot_shutdown_timeout_s; closes `redis`.
    With `await_worker_s`, first wait that long at most for a worker's heartbeat (`await_worker`)."""
    stop = stop_on_signals()
    metrics = Metrics(CollectorRegistry())
    pacer = ChatPacer(redis, settings.redis_prefix, settings.group_messages_per_minute)
    bot = build_bot(settings, pacer, metrics, global_pacer(redis, settings.redis_prefix, settings.messages_per_second))
    services = build_services(settings, redis, bot, metrics)
    dispatcher = build_dispatcher(settings, services)
    in_flight = InFlightUpdates()
    dispatcher.update.outer_middleware(in_flight)
    inbox = UpdateInbox(redis, settings.redis_prefix)  # started (it replays) only once the lease is held
    dispatcher.update.outer_middleware(inbox)
    bot.session.middleware(inbox.keep_received)
    lease = BotLease(redis, settings.redis_prefix, settings.bot_lease_ttl_s)
    holding = False
    server = start_metrics_server(settings, services, lease, lambda: holding)
    if await_worker_s:
        await await_worker(services.queue, stop, await_worker_s)
    # Built and imported: a standby takes over within the lease's lapse, not after a process start.
    if stop.is_set() or not await lease.acquire(stop):
        log.info("standby bot stopped")
        if server is not None:
            await asyncio.to_thread(server.stop)
        await redis.aclose()
        await bot.session.close()
        return
    holding = True
    server = server or start_metrics_server(settings, services, lease, lambda: holding)  # the dead one's port is free
    receiver = Webhook(bot, dispatcher, settings, inbox) if settings.webhook_url else Polling(bot, dispatcher)
    serving = asyncio.create_task(receiver.serve(), name=receiver.name)
    inbox.start(dispatcher, bot)
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    keeping = asyncio.create_task(lease.keep(), name="lease")
    lost = False  # the lease: another process serves now
    try:
        await asyncio.wait({serving, stopping, keeping}, return_when=asyncio.FIRST_COMPLETED)
        if keeping.done() and not keeping.cancelled():
            if keeping.exception() is not None:
                log.error("keeping the Telegram lease failed; stopping", exc_info=keeping.exception())
            else:
                lost = True
                log.warning("%s serves Telegram now (this bot's lease lapsed while it stalled, or Redis lost it); "
                            "stopping, to start again as a standby", keeping.result())
    finally:
        stopping.cancel()

        async def hand_over() -> None:
            # Renewed until here: a lease that lapsed during the deliveries' stage would let a standby deliver
            # the same results (it re-reads what this process has not acked yet).
            await cancel_and_wait(keeping)
            await lease.release()

        budget = settings.bot_shutdown_timeout_s
        start_watchdog(budget + WATCHDOG_MARGIN_S)
        started = time.monotonic()
        stages = [
            Stage(receiver.name, lambda: receiver.stop(serving), STAGE_SHARES["receiver"]),
            Stage("inbox", inbox.stop, STAGE_SHARES["inbox"]),
            Stage("updates", in_flight.drain, STAGE_SHARES["updates"]),
            Stage("daily", services.daily.stop, STAGE_SHARES["daily"]),
            Stage("broadcasts", services.broadcasts.stop, STAGE_SHARES["broadcasts"]),
            Stage("results_reader", services.delivery.stop_reading, STAGE_SHARES["results_reader"]),
            Stage("delivery", services.delivery.abandon if lost else services.delivery.close, STAGE_SHARES["delivery"]),
            *([Stage("metrics", lambda: asyncio.to_thread(server.stop), STAGE_SHARES["metrics"])] if server else []),
            # Last before Redis closes: a standby takes over only once this bot's deliveries are done.
            Stage("lease", hand_over, STAGE_SHARES["lease"]),
            Stage("redis", redis.aclose, STAGE_SHARES["redis"]),
            Stage("session", bot.session.close, STAGE_SHARES["session"]),
        ]
        reports = await run_stages(stages, budget)
        late = [report.name for report in reports if report.outcome != "ok"]
        cut_short = f"; cut short: {', '.join(late)}" if late else ""
        log.info("bot stopped in %.2fs%s", time.monotonic() - started, cut_short)
    if serving.done() and not serving.cancelled() and serving.exception() is not None:
        raise serving.exception()  # e.g. Telegram rejected the token at startup
