"""/stats: everyone's own statistics (jokes, votes given, favourite opening); for the bot's admins the bot's
(queue, workers, latency, votes per size), and their own with `/stats me`."""
from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.common.settings import Settings
from bot.queue.client import RequestQueue
from bot.telegram.audit import AuditLog
from bot.telegram.feedback import FeedbackStore
from bot.telegram.handlers.admin import IsAdmin, audit_command
from bot.telegram.handlers.joke import sender_id
from bot.telegram.texts import Texts
from bot.telegram.user_stats import UserStatsStore

router = Router(name="stats")


@router.message(Command("stats"))
async def stats(message: Message, command: CommandObject, queue: RequestQueue, feedback: FeedbackStore,
                user_stats: UserStatsStore, settings: Settings, audit: AuditLog, t: Texts) -> None:
    if await IsAdmin()(message, settings) and (command.args or "").strip().lower() != "me":
        await audit_command(audit, message, command, "shown")
        await message.reply(await bot_stats(queue, feedback, settings, t))
        return
    mine = await user_stats.get(sender_id(message))
    opening = (t.plural("USER_STATS_OPENING", mine.favourite_uses, opening=mine.favourite_opening,
                        uses=mine.favourite_uses)
               if mine.favourite_opening else t.USER_STATS_NO_OPENING)
    await message.reply(t.USER_STATS.format(jokes=mine.jokes, up=mine.up, down=mine.down, opening=opening))


async def bot_stats(queue: RequestQueue, feedback: FeedbackStore, settings: Settings, t: Texts) -> str:
    workers = await queue.live_workers()
    worker_text = f"{len(workers)}" + "".join(
        t.STATS_WORKER_LINE.format(worker=w.worker_id, device=w.device, sizes=", ".join(w.loaded_sizes),
                                   processed=w.processed) for w in workers)
    latency = await feedback.latency()
    totals = await feedback.totals()
    sizes = await feedback.size_stats()
    size_lines = "\n".join(t.STATS_SIZE_LINE.format(size=s.size, jokes=s.jokes, up=s.up, down=s.down)
                           for s in sizes) or t.STATS_NO_SIZES
    return t.STATS.format(
        queue=await queue.depth(), workers=worker_text,
        active=await queue.get_active_size() or settings.default_size,
        p50=t.seconds(latency.p50) if latency.p50 is not None else t.STATS_NO_LATENCY,
        p95=t.seconds(latency.p95) if latency.p95 is not None else t.STATS_NO_LATENCY,
        samples=latency.samples, requests=totals["requests"], timeouts=totals["timeouts"], sizes=size_lines,
    )
