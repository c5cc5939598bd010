"""Admin commands: /model (show or switch the active size for every worker), and the refusal every
non-admin gets for any admin command.

Admins are the user ids in ADMIN_IDS. Everyone else gets a polite refusal and nothing changes. Every
attempt, allowed or not, goes to the audit log (bot/telegram/audit.py) with who, what and the arguments.
"""
from __future__ import annotations

from aiogram import Router
from aiogram.filters import BaseFilter, Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.common.settings import Settings
from bot.queue.client import RequestQueue
from bot.telegram import texts
from bot.telegram.audit import AuditLog
from bot.telegram.texts import Texts

router = Router(name="admin")


class IsAdmin(BaseFilter):
    """The sender of a message or a button press is one of ADMIN_IDS."""

    async def __call__(self, event: Message | CallbackQuery, settings: Settings) -> bool:
        return event.from_user is not None and event.from_user.id in settings.admin_ids


async def audit_command(audit: AuditLog, message: Message, command: CommandObject, outcome: str) -> None:
    await audit.record(message.from_user.id if message.from_user else None, message.chat.id, command.command,
                       command.args or "", outcome)


@router.message(Command(*texts.ADMIN_COMMAND_NAMES), ~IsAdmin())
async def refuse(message: Message, command: CommandObject, audit: AuditLog, t: Texts) -> None:
    await audit_command(audit, message, command, "refused: not an admin")
    await message.reply(t.ADMIN_ONLY)


async def _available_sizes(queue: RequestQueue) -> list[str]:
    return sorted({size for worker in await queue.live_workers() for size in worker.loaded_sizes})


@router.message(Command("model"), IsAdmin())
async def model(message: Message, command: CommandObject, queue: RequestQueue, settings: Settings, audit: AuditLog,
                t: Texts) -> None:
    available = await _available_sizes(queue)
    shown = ", ".join(available) or t.MODEL_NONE_AVAILABLE
    active = await queue.get_active_size() or settings.default_size
    wanted = (command.args or "").strip().lower()
    if not wanted:
        await audit_command(audit, message, command, "shown")
        await message.reply(t.MODEL_STATUS.format(active=active, available=shown))
        return
    if wanted not in available:
        await audit_command(audit, message, command, "refused: size not available")
        await message.reply(t.MODEL_UNKNOWN.format(size=wanted[:32], available=shown))
        return
    # Persisted in Redis: workers read it at every batch, and it outlives restarts of everything.
    await queue.set_active_size(wanted, by_user=message.from_user.id if message.from_user else None)
    await audit_command(audit, message, command, f"switched {active} -> {wanted}")
    await message.reply(t.MODEL_SWITCHED.format(old=active, new=wanted))
