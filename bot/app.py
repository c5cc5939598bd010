"""Assemble the bot: Bot (session, middlewares), services on Redis, Dispatcher with the feature
routers, and run it by long polling (default) or as a webhook server.

Everything a handler needs is injected through the Dispatcher's keyword arguments (`settings`,
`queue`, `jokes`, `feedback`, `outstanding`, `metrics`): handlers name what they use in their signature.
With BOT_METRICS_PORT set, `/metrics` and `/healthz` are served from a background thread.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from contextlib import suppress
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bot import texts
from bot.delivery import DeliveryLoop, InlineWaiters
from bot.feedback import FeedbackStore
from bot.jokes import JokeService
from bot.metrics import Metrics, MetricsServer, start_http_server
from bot.outbox import Outbox
from bot.outstanding import OutstandingRequests
from bot.queue import RequestQueue
from bot.ratelimit import ChatPacer, UserRateLimiter
from bot.results import ResultReader
from bot.routers import feature_routers
from bot.settings import Settings
from bot.telegram_middlewares import FloodControl, GroupPacing

log = logging.getLogger(__name__)

# Inline queries come once per typing pause, so they get a roomier bucket than /joke.
INLINE_RATE_FACTOR = 3
# /healthz turns 503 when the delivery loop (it goes round every second) or Redis has been silent this long.
HEALTH_STALE_S = 30.0


def build_bot(settings: Settings, pacer: ChatPacer, metrics: Metrics) -> Bot:
    api = settings.telegram_api_base.rstrip("/")
    session = AiohttpSession(api=TelegramAPIServer.from_base(api)) if api else AiohttpSession()
    session.middleware(FloodControl(metrics))
    session.middleware(GroupPacing(pacer))
    # No default parse_mode: every text goes out plain, so model output is never parsed as markup.
    return Bot(settings.bot_token.get_secret_value(), session=session,
               default=DefaultBotProperties(link_preview_is_disabled=True))


@dataclass
class Services:
    redis: Redis
    queue: RequestQueue
    feedback: FeedbackStore
    outstanding: OutstandingRequests
    jokes: JokeService
    delivery: DeliveryLoop
    metrics: Metrics


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
    jokes = JokeService(settings, queue, outstanding, limiter, inline_limiter, feedback, outbox, waiters, metrics)
    reader = ResultReader(redis, settings.queue_config())
    delivery = DeliveryLoop(reader, outstanding, feedback, outbox, waiters, metrics, settings.edit_interval_s)
    return Services(redis, queue, feedback, outstanding, jokes, delivery, metrics)


def build_dispatcher(settings: Settings, services: Services) -> Dispatcher:
    dispatcher = Dispatcher(settings=settings, queue=services.queue, feedback=services.feedback,
                            outstanding=services.outstanding, jokes=services.jokes, metrics=services.metrics)
    dispatcher.include_routers(*feature_routers())
    delivery_task: list[asyncio.Task] = []

    async def on_startup(bot: Bot) -> None:
        await set_commands(bot, settings)
        delivery_task.append(asyncio.create_task(services.delivery.run(), name="delivery"))
        me = await bot.me()
        log.info("bot @%s started; admins %s", me.username, settings.admin_ids)

    async def on_shutdown() -> None:
        for task in delivery_task:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await services.delivery.close()
        log.info("bot stopped")

    dispatcher.startup.register(on_startup)
    dispatcher.shutdown.register(on_shutdown)
    return dispatcher


async def set_commands(bot: Bot, settings: Settings) -> None:
    """The command menu; admins also see the admin commands in their private chat with the bot."""
    public = [BotCommand(command=name, description=text) for name, text in texts.COMMANDS.items()]
    await bot.set_my_commands(public, scope=BotCommandScopeDefault())
    admin = public + [BotCommand(command=name, description=text) for name, text in texts.ADMIN_COMMANDS.items()]
    for admin_id in settings.admin_ids:
        try:
            await bot.set_my_commands(admin, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramAPIError as error:  # e.g. the admin never opened a chat with the bot
            log.warning("admin command menu for %s not set: %s", admin_id, error)


async def run_polling(bot: Bot, dispatcher: Dispatcher) -> None:
    # A webhook left over from an earlier deployment would make getUpdates fail with 409.
    await bot.delete_webhook(drop_pending_updates=False)
    await dispatcher.start_polling(bot, polling_timeout=25, handle_signals=True, close_bot_session=True)


async def run_webhook(bot: Bot, dispatcher: Dispatcher, settings: Settings) -> None:
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application

    # Telegram sends this secret in X-Telegram-Bot-Api-Secret-Token; requests without it get 401.
    secret = settings.webhook_secret or secrets.token_urlsafe(32)
    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, secret_token=secret).register(app, path=settings.webhook_path)
    setup_application(app, dispatcher, bot=bot)

    async def register_webhook(_: web.Application) -> None:
        await bot.set_webhook(settings.webhook_url, secret_token=secret,
                              allowed_updates=dispatcher.resolve_used_update_types())
        log.info("webhook %s registered; listening on %s:%s%s", settings.webhook_url, settings.webhook_host,
                 settings.webhook_port, settings.webhook_path)

    app.on_startup.append(register_webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
        await stop.wait()
        log.info("stopping the webhook server")
    finally:
        await runner.cleanup()  # runs the dispatcher's shutdown
        await bot.session.close()


def start_metrics_server(settings: Settings, services: Services) -> MetricsServer | None:
    """`/metrics` + `/healthz` on BOT_METRICS_PORT; None when it is not set."""
    if settings.bot_metrics_port is None:
        return None
    return start_http_server(services.metrics.registry, settings.metrics_host, settings.bot_metrics_port,
                             lambda: services.delivery.health(HEALTH_STALE_S))


async def run(settings: Settings, redis: Redis) -> None:
    """Serve until SIGTERM/SIGINT. The caller owns `redis` and closes it afterwards."""
    metrics = Metrics(CollectorRegistry())
    pacer = ChatPacer(redis, settings.redis_prefix, settings.group_messages_per_minute)
    bot = build_bot(settings, pacer, metrics)
    services = build_services(settings, redis, bot, metrics)
    dispatcher = build_dispatcher(settings, services)
    server = start_metrics_server(settings, services)
    try:
        if settings.webhook_url:
            await run_webhook(bot, dispatcher, settings)
        else:
            await run_polling(bot, dispatcher)
    finally:
        if server is not None:
            server.stop()
