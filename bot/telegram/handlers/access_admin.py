"""Admin tools for who may use the bot: /ban and /unban a user, /allow and /disallow a user or a chat (with
ACCESS=allowlist), and /audit, the latest entries of the audit log. The id is the command's argument, or
the sender of the message the command replies to. Non-admins get the refusal of handlers/admin.py.
"""
from __future__ import annotations

from datetime import datetime, timezone

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.common.settings import Settings
from bot.telegram.access import AccessList
from bot.telegram.audit import AuditLog
from bot.telegram.handlers.admin import IsAdmin, audit_command
from bot.telegram.texts import Texts

router = Router(name="access_admin")
router.message.filter(IsAdmin())

AUDIT_SHOWN = 15
TELEGRAM_ID_LIMIT = 2**52  # user and chat ids fit in 52 bits (Bot API docs)


def target_id(message: Message, command: CommandObject, *, chats: bool = False) -> int | None:
    """The id in the argument (an integer; negative only for chats), else the replied-to message's sender."""
    argument = (command.args or "").strip()
    if not argument and message.reply_to_message is not None and message.reply_to_message.from_user is not None:
        return message.reply_to_message.from_user.id
    try:
        value = int(argument)
    except ValueError:
        return None
    if value == 0 or abs(value) >= TELEGRAM_ID_LIMIT * 1000 or (value < 0 and not chats):
        return None  # 0, absurd sizes, a chat id where only users make sense
    return value


async def _bad_id(message: Message, command: CommandObject, audit: AuditLog, t: Texts) -> None:
    await audit_command(audit, message, command, "refused: bad id")
    await message.reply(t.ADMIN_BAD_ID.format(command=command.command))


@router.message(Command("ban"))
async def ban(message: Message, command: CommandObject, access: AccessList, settings: Settings, audit: AuditLog,
              t: Texts) -> None:
    user_id = target_id(message, command)
    if user_id is None:
        return await _bad_id(message, command, audit, t)
    if user_id in settings.admin_ids:
        await audit_command(audit, message, command, "refused: an admin")
        return await message.reply(t.BAN_ADMIN)
    banned = await access.ban(user_id, by=message.from_user.id)
    await audit_command(audit, message, command, f"banned {user_id}" if banned else f"{user_id} was banned already")
    await message.reply((t.BAN_DONE if banned else t.BAN_ALREADY).format(user_id=user_id))


@router.message(Command("unban"))
async def unban(message: Message, command: CommandObject, access: AccessList, audit: AuditLog, t: Texts) -> None:
    user_id = target_id(message, command)
    if user_id is None:
        return await _bad_id(message, command, audit, t)
    lifted = await access.unban(user_id)
    await audit_command(audit, message, command, f"unbanned {user_id}" if lifted else f"{user_id} was not banned")
    await message.reply((t.UNBAN_DONE if lifted else t.UNBAN_NOT_BANNED).format(user_id=user_id))


@router.message(Command("allow", "disallow"))
async def allow(message: Message, command: CommandObject, access: AccessList, settings: Settings, audit: AuditLog,
                t: Texts) -> None:
    entity_id = target_id(message, command, chats=True)
    if entity_id is None:
        return await _bad_id(message, command, audit, t)
    note = t.ALLOW_OPEN_NOTE if settings.access == "open" else ""
    if command.command == "allow":
        changed = await access.allow(entity_id)
        text = (t.ALLOW_DONE if changed else t.ALLOW_ALREADY).format(entity_id=entity_id, note=note)
    else:
        changed = await access.disallow(entity_id)
        text = (t.DISALLOW_DONE if changed else t.DISALLOW_NOT_ALLOWED).format(entity_id=entity_id)
    await audit_command(audit, message, command, f"{command.command}ed {entity_id}" if changed else "no change")
    await message.reply(text)


@router.message(Command("audit"))
async def show_audit(message: Message, command: CommandObject, audit: AuditLog, t: Texts) -> None:
    entries = await audit.latest(AUDIT_SHOWN)
    await audit_command(audit, message, command, "shown")
    if not entries:
        return await message.reply(t.AUDIT_EMPTY)
    lines = [t.AUDIT_LINE.format(at=datetime.fromtimestamp(e.at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                 user_id=e.user_id, action=e.action, args=e.args[:60], outcome=e.outcome)
             for e in entries]
    await message.reply("\n".join([t.AUDIT_HEADER, *lines]))
