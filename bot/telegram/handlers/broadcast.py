"""/broadcast TEXT (admins): a preview with "✅ Send" / "✖ Cancel"; sending and resuming are
bot/telegram/broadcast.py's. The buttons are signed for the admin's chat and checked again on press: only an
admin's press counts, and only once (a second "Send" finds the broadcast running)."""
from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.common.settings import Settings
from bot.telegram import texts
from bot.telegram.audit import AuditLog
from bot.telegram.broadcast import Broadcasts, Finished, Send
from bot.telegram.daily import DailyJokes
from bot.telegram.handlers.admin import IsAdmin, audit_command
from bot.telegram.keyboards import BroadcastAction, SignedButton, broadcast_keyboard
from bot.telegram.outbox import MAX_MESSAGE_UTF16, Outbox, fit_message, utf16_len
from bot.telegram.signing import Signer, chat_scope
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)
router = Router(name="broadcast")


def runner_callbacks(bot: Bot) -> tuple[Send, Finished]:
    """What the runner needs from Telegram: send a chat the text; edit the report into the confirmation."""
    outbox = Outbox(bot)

    async def send(chat_id: int, text: str) -> None:
        await outbox.send(chat_id, text)

    async def finished(record: dict[str, str]) -> None:
        t = texts.get(record.get("language"))
        report = (t.BROADCAST_CANCELLED.format(sent=record.get("sent", 0)) if record.get("state") == "cancelled"
                  else t.BROADCAST_DONE.format(sent=record.get("sent", 0), failed=record.get("failed", 0)))
        try:
            await bot.edit_message_text(text=report, chat_id=int(record["chat_id"]),
                                        message_id=int(record.get("message_id") or 0))
        except (TelegramAPIError, ValueError) as error:  # the confirmation was deleted: say it anew
            log.info("broadcast report not edited in (%s); sending it", error)
            await outbox.send(int(record["chat_id"]), report)

    return send, finished


@router.message(Command("broadcast"), IsAdmin())
async def prepare(message: Message, command: CommandObject, broadcasts: Broadcasts, daily: DailyJokes,
                  signer: Signer, audit: AuditLog, t: Texts) -> None:
    text = (command.args or "").strip()
    if not text:
        await audit_command(audit, message, command, "refused: no text")
        return await message.reply(t.BROADCAST_USAGE)
    if utf16_len(text) > MAX_MESSAGE_UTF16:
        await audit_command(audit, message, command, "refused: too long")
        return await message.reply(t.plural("BROADCAST_TOO_LONG", utf16_len(text), length=utf16_len(text),
                                            limit=MAX_MESSAGE_UTF16))
    chats = await daily.subscribed_chats()
    if not chats:
        await audit_command(audit, message, command, "refused: no subscribers")
        return await message.reply(t.BROADCAST_NOBODY)
    broadcast_id = await broadcasts.create(text, by=message.from_user.id, chat_id=message.chat.id,
                                           language=t.language)
    asked = t.plural("BROADCAST_CONFIRM", len(chats), count=len(chats), text=text)
    confirmation = await message.reply(fit_message(asked),
                                       reply_markup=broadcast_keyboard(broadcast_id, signer,
                                                                       chat_scope(message.chat.id), t))
    await broadcasts.set_message(broadcast_id, confirmation.message_id)
    await audit_command(audit, message, command, f"prepared {broadcast_id} for {len(chats)} chats")


@router.callback_query(SignedButton(BroadcastAction))
async def press(callback: CallbackQuery, callback_data: BroadcastAction, bot: Bot, broadcasts: Broadcasts,
                daily: DailyJokes, settings: Settings, audit: AuditLog, signer: Signer, t: Texts) -> None:
    broadcast_id, action = callback_data.broadcast_id, callback_data.action
    chat_id = callback.message.chat.id if callback.message is not None else None
    if not await IsAdmin()(callback, settings):
        await audit.record(callback.from_user.id, chat_id, f"broadcast {action}", broadcast_id, "refused: not an admin")
        return await callback.answer(t.ADMIN_ONLY, show_alert=True)
    if action == "send":
        chats = await daily.subscribed_chats()
        if not await broadcasts.begin(broadcast_id, chats):
            await audit.record(callback.from_user.id, chat_id, "broadcast send", broadcast_id, "refused: not pending")
            return await callback.answer(t.BROADCAST_NOT_PENDING, show_alert=True)
        await audit.record(callback.from_user.id, chat_id, "broadcast send", broadcast_id,
                           f"started: {len(chats)} chats")
        await callback.answer(t.plural("BROADCAST_STARTED", len(chats), count=len(chats)))
        if callback.message is not None and chat_id is not None:
            only_cancel = broadcast_keyboard(broadcast_id, signer, chat_scope(chat_id), t, sending=True)
            try:
                await bot.edit_message_reply_markup(chat_id=chat_id, message_id=callback.message.message_id,
                                                    reply_markup=only_cancel)
            except TelegramAPIError as error:
                log.info("broadcast %s keyboard not updated: %s", broadcast_id, error)
        broadcasts.run_in_background(broadcast_id, *runner_callbacks(bot))
        return
    record = await broadcasts.get(broadcast_id)
    if not await broadcasts.cancel(broadcast_id):
        return await callback.answer(t.BROADCAST_NOT_PENDING, show_alert=True)
    await audit.record(callback.from_user.id, chat_id, "broadcast cancel", broadcast_id, "cancelled")
    await callback.answer(t.BROADCAST_CANCELLED.format(sent=record.get("sent", 0) if record else 0))
    if record is not None and record.get("state") == "pending":  # no runner to report it: say it here
        _, finished = runner_callbacks(bot)
        await finished({**record, "state": "cancelled"})
