"""Admin commands: /model (show or switch the active size for every worker) and /stats.

Admins are the user ids in ADMIN_IDS. Everyone else gets a polite refusal and nothing changes.
Every attempt, allowed or not, is logged with who, what and the arguments.
"""
from __future__ import annotations

import logging

from aiogram import Router
from aiogram.filters import BaseFilter, Command, CommandObject
from aiogram.types import Message

from bot.common.logs import log_event
from bot.common.settings import Settings
from bot.queue.client import RequestQueue
from bot.telegram import texts
from bot.telegram.feedback import FeedbackStore

log = logging.getLogger(__name__)
router = Router(name="admin")


class IsAdmin(BaseFilter):
    async def __call__(self, message: Message, settings: Settings) -> bool:
        return message.from_user is not None and message.from_user.id in settings.admin_ids


def _audit(message: Message, command: CommandObject, outcome: str) -> None:
    fields = {"user_id": message.from_user.id if message.from_user else None, "chat_id": message.chat.id,
              "action": command.command, "args": command.args or "", "outcome": outcome}
    log_event(log, "admin action", fields, quote=True)


@router.message(Command(*texts.ADMIN_COMMANDS), ~IsAdmin())
async def refuse(message: Message, command: CommandObject) -> None:
    _audit(message, command, "refused: not an admin")
    await message.reply(texts.ADMIN_ONLY)


async def _available_sizes(queue: RequestQueue) -> list[str]:
    return sorted({size for worker in await queue.live_workers() for size in worker.loaded_sizes})


@router.message(Command("model"), IsAdmin())
async def model(message: Message, command: CommandObject, queue: RequestQueue, settings: Settings) -> None:
    available = await _available_sizes(queue)
    shown = ", ".join(available) or texts.MODEL_NONE_AVAILABLE
    active = await queue.get_active_size() or settings.default_size
    wanted = (command.args or "").strip().lower()
    if not wanted:
        _audit(message, command, "shown")
        await message.reply(texts.MODEL_STATUS.format(active=active, available=shown))
        return
    if wanted not in available:
        _audit(message, command, "refused: size not available")
        await message.reply(texts.MODEL_UNKNOWN.format(size=wanted[:32], available=shown))
        return
    # Persisted in Redis: workers read it at every batch, and it outlives restarts of everything.
    await queue.set_active_size(wanted, by_user=message.from_user.id if message.from_user else None)
    _audit(message, command, f"switched {active} -> {wanted}")
    await message.reply(texts.MODEL_SWITCHED.format(old=active, new=wanted))


@router.message(Command("stats"), IsAdmin())
async def stats(message: Message, command: CommandObject, queue: RequestQueue, feedback: FeedbackStore,
                settings: Settings) -> None:
    _audit(message, command, "shown")
    workers = await queue.live_workers()
    worker_text = f"{len(workers)}" + "".join(
        f"\n  • {w.worker_id} ({w.device}): {', '.join(w.loaded_sizes)}; обработано {w.processed}" for w in workers)
    latency = await feedback.latency()
    totals = await feedback.totals()
    sizes = await feedback.size_stats()
    size_lines = "\n".join(texts.STATS_SIZE_LINE.format(size=s.size, jokes=s.jokes, up=s.up, down=s.down)
                           for s in sizes) or texts.STATS_NO_SIZES
    await message.reply(texts.STATS.format(
        queue=await queue.depth(), workers=worker_text,
        active=await queue.get_active_size() or settings.default_size,
        p50=texts.seconds(latency.p50) if latency.p50 is not None else texts.STATS_NO_LATENCY,
        p95=texts.seconds(latency.p95) if latency.p95 is not None else texts.STATS_NO_LATENCY,
        samples=latency.samples, requests=totals["requests"], timeouts=totals["timeouts"], sizes=size_lines,
    ))
