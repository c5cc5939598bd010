"""The update inbox (bot/telegram/inbox.py) on a real Redis: an update is kept from the moment getUpdates
answers, before the polling loop's next call confirms it to Telegram, so a process killed before its handler
even started leaves it for the next process to replay; and one handled while Redis refused writes is removed
once Redis takes them again, so a restart does not answer it a second time. (The end-to-end kill is in
tests/test_bot_e2e_restart.py.)
"""
from __future__ import annotations

import redis.asyncio
from aiogram import Bot, Dispatcher
from aiogram.methods import GetUpdates
from aiogram.types import Message, Update

from bot.telegram.inbox import UpdateInbox

TOKEN = "123456:TEST-inbox-token"


def update(update_id: int, text: str) -> Update:
    user = {"id": 5, "is_bot": False, "first_name": "Ира"}
    return Update.model_validate({"update_id": update_id, "message": {
        "message_id": update_id, "date": 0, "chat": {"id": 5, "type": "private"}, "from": user, "text": text}})


def process(client: redis.asyncio.Redis, prefix: str) -> tuple[UpdateInbox, Dispatcher, list[str]]:
    """One bot process's inbox and dispatcher; the list collects the texts its handler saw."""
    inbox, dispatcher, seen = UpdateInbox(client, prefix), Dispatcher(), []

    @dispatcher.message()
    async def handle(message: Message) -> None:
        seen.append(message.text)

    dispatcher.update.outer_middleware(inbox)
    return inbox, dispatcher, seen


async def test_updates_are_kept_on_receipt_and_what_a_killed_process_never_handled_is_replayed(redis_client,
                                                                                                key_prefix,
                                                                                                monkeypatch):
    bot = Bot(TOKEN)
    first, first_dispatcher, first_seen = process(redis_client, key_prefix)
    received = [update(7, "/joke handled"), update(8, "/joke never started")]

    async def telegram(_bot: Bot, method: GetUpdates, timeout: int | None = None) -> list[Update]:
        return received if isinstance(method, GetUpdates) else True

    monkeypatch.setattr(bot.session, "make_request", telegram)  # the HTTP call; the middleware chain is aiogram's
    bot.session.middleware(first.keep_received)
    assert await bot(GetUpdates(offset=7)) == received
    # Kept before the polling loop has them, so before its next getUpdates can confirm them.
    assert set(await redis_client.hkeys(f"{key_prefix}bot:inbox")) == {"7", "8"}
    await first_dispatcher.feed_update(bot, received[0])
    assert first_seen == ["/joke handled"]
    assert set(await redis_client.hkeys(f"{key_prefix}bot:inbox")) == {"8"}
    # The process dies here, update 8 in hand. Its own inbox never replays it; the next process does, once.
    assert await first.replay(first_dispatcher, bot) == 0
    second, second_dispatcher, second_seen = process(redis_client, key_prefix)
    assert await second.replay(second_dispatcher, bot) == 1
    assert second_seen == ["/joke never started"]
    assert await second.replay(second_dispatcher, bot) == 0  # handled: gone
    assert await redis_client.hkeys(f"{key_prefix}bot:inbox") == []
    await bot.session.close()


async def test_an_update_handled_while_redis_refused_writes_is_removed_once_it_takes_them(redis_server_factory,
                                                                                          key_prefix):
    server = redis_server_factory(appendonly=False)
    client = redis.asyncio.from_url(server.url, decode_responses=True)
    bot = Bot(TOKEN)
    try:
        first, dispatcher, seen = process(client, key_prefix)
        dispatcher.message.middleware(lambda handler, event, data: refusing_writes(client, handler, event, data))
        await dispatcher.feed_update(bot, update(9, "/joke in an outage"))
        assert seen == ["/joke in an outage"]
        assert await client.hkeys(f"{key_prefix}bot:inbox") == ["9"]  # its removal was refused
        await client.config_set("min-replicas-to-write", 0)
        await first.replay(dispatcher, bot)  # this process's next round
        assert await client.hkeys(f"{key_prefix}bot:inbox") == []
        second, second_dispatcher, second_seen = process(client, key_prefix)
        assert await second.replay(second_dispatcher, bot) == 0
        assert second_seen == []
    finally:
        await bot.session.close()
        await client.aclose()


async def test_the_webhook_keeps_what_telegram_posted_as_it_is_and_ignores_what_is_no_update(redis_client,
                                                                                             key_prefix):
    inbox, dispatcher, seen = process(redis_client, key_prefix)
    posted = update(11, "/joke из вебхука").model_dump(mode="json", exclude_none=True)
    for junk in (["not", "an", "update"], {"update_id": "11"}, None):
        await inbox.keep_raw(junk)
    await inbox.keep_raw(posted)
    assert await redis_client.hkeys(f"{key_prefix}bot:inbox") == ["11"]
    bot = Bot(TOKEN)
    other, other_dispatcher, other_seen = process(redis_client, key_prefix)
    assert await other.replay(other_dispatcher, bot) == 1
    assert other_seen == ["/joke из вебхука"]
    await bot.session.close()


async def refusing_writes(client: redis.asyncio.Redis, handler, event, data):
    """Redis starts refusing writes while the handler runs (its disk filled up, say)."""
    result = await handler(event, data)
    await client.config_set("min-replicas-to-write", 1)
    return result


async def test_replayed_updates_are_handled_side_by_side(redis_client, key_prefix):
    """A killed bot may leave many updates; one slow handler (a placeholder paced behind the takeover's burst)
    must not hold the others back, nor one that fails stop the rest."""
    import asyncio

    bot = Bot(TOKEN)
    killed, _, _ = process(redis_client, key_prefix)
    for n in range(3):
        await killed.keep_raw(update(40 + n, f"/joke {n}").model_dump(mode="json", exclude_none=True))
    standby, dispatcher, seen = UpdateInbox(redis_client, key_prefix), Dispatcher(), []

    @dispatcher.message()
    async def handle(message: Message) -> None:
        if message.text == "/joke 0":
            await asyncio.sleep(1.0)  # slow
        elif message.text == "/joke 1":
            raise RuntimeError("a bug")
        seen.append(message.text)

    dispatcher.update.outer_middleware(standby)
    assert await standby.replay(dispatcher, bot) == 3
    assert seen == ["/joke 2", "/joke 0"]  # kept in this order, and 2 did not wait for 0
    assert await redis_client.hkeys(f"{key_prefix}bot:inbox") == []
    await bot.session.close()
