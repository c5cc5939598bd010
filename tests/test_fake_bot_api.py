"""Tests of the fake Telegram Bot API server itself, driven by a real aiogram Bot and raw aiohttp."""
import asyncio
import json
import time
import urllib.request

import aiohttp
import pytest
from aiogram.exceptions import TelegramBadRequest, TelegramConflictError, TelegramRetryAfter, TelegramServerError
from aiogram.types import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQueryResultArticle,
    InputTextMessageContent,
    Update,
)

from tests.fake_bot_api import MAX_TEXT, FakeBotAPI

USER = 1001
GROUP = -1001234567890




async def test_get_me(bot, api):
    me = await bot.get_me()
    assert me.username == "rujokes_test_bot" and me.is_bot and me.supports_inline_queries
    assert me.id == api.bot_user["id"] == 123456789
    assert api.calls("getMe")[0].method == "getMe"


async def test_send_edit_and_not_modified(bot, api):
    first = await bot.send_message(USER, "Анекдот 1")
    second = await bot.send_message(USER, "Анекдот 2")
    assert (first.message_id, second.message_id) == (1, 2)
    assert first.chat.type == "private" and first.from_user.id == api.bot_user["id"]

    edited = await bot.edit_message_text("Анекдот 1, дописанный", chat_id=USER, message_id=1)
    assert edited.text == "Анекдот 1, дописанный" and edited.edit_date is not None
    assert api.messages_in_chat(USER) == ["Анекдот 1, дописанный", "Анекдот 2"]

    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("Анекдот 1, дописанный", chat_id=USER, message_id=first.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=USER, message_id=99)
    assert api.calls("editMessageText")[-1].error[0] == 400

    assert await bot.delete_message(USER, second.message_id)
    assert api.messages_in_chat(USER) == ["Анекдот 1, дописанный"]


async def test_retry_after_injection(bot, api):
    api.fail_next("sendMessage", error_code=429, retry_after=7)
    with pytest.raises(TelegramRetryAfter) as excinfo:
        await bot.send_message(USER, "раз")
    assert excinfo.value.retry_after == 7
    assert (await bot.send_message(USER, "два")).text == "два"  # only the next call failed
    api.fail_next("*", error_code=500, times=2)
    for _ in range(2):
        with pytest.raises(Exception, match="Internal Server Error"):
            await bot.get_me()
    assert (await bot.get_me()).username


async def test_long_poll_returns_injected_update(bot, api):
    # Held open for up to 30 s; the update ends it: an answer within 20 s can only be the update waking it
    # (no sub-second bound, which a loaded machine would not keep).
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await asyncio.sleep(0.1)
    assert not poll.done()  # nothing queued: the request is held open
    api.private_message(USER, "/start")
    updates = await asyncio.wait_for(poll, 20)
    assert [u.message.text for u in updates] == ["/start"]
    assert updates[0].message.entities[0].type == "bot_command"


async def test_long_poll_waits_until_timeout(bot):
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == []
    assert 0.9 <= time.monotonic() - started < 3


async def test_offset_confirmation_and_limit(bot, api):
    ids = [api.private_message(USER, f"m{i}")["update_id"] for i in range(3)]
    assert [u.update_id for u in await bot.get_updates(limit=2)] == ids[:2]
    assert [u.update_id for u in await bot.get_updates()] == ids  # nothing confirmed yet
    assert [u.update_id for u in await bot.get_updates(offset=ids[1] + 1)] == ids[2:]
    assert [u["update_id"] for u in api.pending_updates] == ids[2:]  # confirmed ones are gone
    assert await bot.get_updates(offset=ids[2] + 1) == []


async def test_a_stalled_confirmation_confirms_nothing_so_the_updates_come_again(bot, api):
    api.stall_polls()
    ids = [api.private_message(USER, f"m{i}")["update_id"] for i in range(3)]
    assert [u.update_id for u in await bot.get_updates(timeout=1)] == ids  # confirms nothing: answered
    confirming = asyncio.create_task(bot.get_updates(offset=ids[-1] + 1, timeout=5))
    while not api.stalled_polls:
        await asyncio.sleep(0.01)
    assert api.stalled_polls[0]["offset"] == ids[-1] + 1 and not confirming.done()
    api.resume_polls()
    with pytest.raises(TelegramServerError):  # lost on the way: the bot would retry
        await asyncio.wait_for(confirming, 2)
    assert [u.update_id for u in await bot.get_updates()] == ids  # re-delivered to the next poll
    assert await bot.get_updates(offset=ids[-1] + 1) == []  # resumed: confirmed now


async def test_updates_injected_together_reach_a_long_poll_at_once(bot, api):
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.1)

    def inject() -> list[int]:  # from another thread, as a sync test would, pausing between updates
        ids = []
        with api.together():
            for i in range(8):
                ids.append(api.private_message(USER + i, "/joke")["update_id"])
                time.sleep(0.02)
        return ids

    ids = await asyncio.to_thread(inject)
    assert [u.update_id for u in await asyncio.wait_for(poll, 2)] == ids


async def test_concurrent_long_polls_conflict(bot, api):
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(bot.get_updates(timeout=5))
    with pytest.raises(TelegramConflictError):
        await asyncio.wait_for(first, 2)
    api.private_message(USER, "hi")
    assert len(await asyncio.wait_for(second, 2)) == 1


async def test_answer_inline_query_and_edit_inline_message(bot, api):
    query = api.inline_query(USER, "про Штирлица")["inline_query"]
    markup = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Ещё", callback_data="more")]])
    content = InputTextMessageContent(message_text="Штирлиц шёл...")
    result = InlineQueryResultArticle(id="j1", title="Анекдот", input_message_content=content,
                                      reply_markup=markup)
    assert await bot.answer_inline_query(query["id"], [result], cache_time=0, is_personal=True)
    answer = api.inline_answers[-1]
    assert answer["cache_time"] == 0 and answer["is_personal"] is True
    assert answer["results"][0]["input_message_content"]["message_text"] == "Штирлиц шёл..."
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_inline_query("nope", [result])

    chosen = api.chosen_inline_result(USER, "j1", "про Штирлица", inline_message_id="inl-1")
    assert chosen["chosen_inline_result"]["inline_message_id"] == "inl-1"
    assert api.inline_messages["inl-1"]["text"] == "Штирлиц шёл..."  # taken from the chosen result
    new_text = "Штирлиц шёл и думал"
    assert await bot.edit_message_text(new_text, inline_message_id="inl-1", reply_markup=markup) is True
    assert api.inline_messages["inl-1"]["text"] == new_text
    with pytest.raises(TelegramBadRequest, match="not modified"):
        await bot.edit_message_text(new_text, inline_message_id="inl-1", reply_markup=markup)


async def test_multipart_reply_markup_decoded_and_button_press(bot, api):
    markup = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="👍", callback_data="like:1")]])
    sent = await bot.send_message(USER, "Анекдот", reply_markup=markup)
    params = api.calls("sendMessage")[-1].params
    assert params["chat_id"] == USER  # form strings coerced back to ints
    assert params["reply_markup"] == {"inline_keyboard": [[{"text": "👍", "callback_data": "like:1"}]]}
    assert sent.reply_markup.inline_keyboard[0][0].callback_data == "like:1"

    update = Update.model_validate(api.press_button(USER, (USER, sent.message_id), "👍"))
    assert update.callback_query.data == "like:1" and update.callback_query.message.message_id == sent.message_id
    assert await bot.answer_callback_query(update.callback_query.id, text="Спасибо!")
    assert api.callback_answers[-1]["text"] == "Спасибо!"

    # editing only the markup; removing it counts as a change
    assert (await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)).reply_markup is None


async def test_text_limits_and_html(bot, api):
    assert len((await bot.send_message(USER, "я" * MAX_TEXT)).text) == MAX_TEXT
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(USER, "я" * (MAX_TEXT + 1))
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(USER, "")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(USER, "<b>жирный <i>курсив</b>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(USER, "<blink>нет</blink>", parse_mode="HTML")
    sent = await bot.send_message(USER, "😂 <b>Вовочка</b> &amp; Ко", parse_mode="HTML")
    assert sent.text == "😂 Вовочка & Ко"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 3, 7)]


async def test_utf16_entity_offsets_for_command_after_emoji(api):
    update = Update.model_validate(api.group_message(GROUP, USER, "😂👍 /joke@rujokes_test_bot про тёщу"))
    message = update.message
    assert message.chat.type == "supergroup"
    command = message.entities[0]
    assert (command.type, command.offset, command.length) == ("bot_command", 5, 22)
    assert command.extract_from(message.text) == "/joke@rujokes_test_bot"
    assert api.group_message(-42, USER, "hi")["message"]["chat"]["type"] == "group"


async def test_group_reply_to_bot_message(bot, api):
    sent = await bot.send_message(GROUP, "Анекдот")
    update = Update.model_validate(api.group_message(GROUP, USER, "ещё!", reply_to=sent.model_dump(by_alias=True)))
    assert update.message.reply_to_message.from_user.id == api.bot_user["id"]
    assert update.message.message_id == sent.message_id + 1  # ids are shared per chat


async def test_get_chat_member_answers_as_telegram_does(bot, api):
    """ChatMember shapes aiogram parses strictly: owner, admin (every required right), member, left."""
    api.set_chat_member(GROUP, 1, "creator")
    api.set_chat_member(GROUP, 2, "administrator")
    api.group_message(GROUP, 3, "привет")  # writing in a group makes a member
    owner, admin, member, stranger = [await bot.get_chat_member(GROUP, user) for user in (1, 2, 3, 4)]
    assert (type(owner).__name__, owner.status, owner.user.id) == ("ChatMemberOwner", "creator", 1)
    assert type(admin).__name__ == "ChatMemberAdministrator" and admin.can_manage_chat and not admin.is_anonymous
    assert (type(member).__name__, member.status) == ("ChatMemberMember", "member")
    assert (type(stranger).__name__, stranger.status, stranger.user.id) == ("ChatMemberLeft", "left", 4)
    api.set_chat_member(GROUP, 3, "left")  # and an explicit status wins over having written
    assert (await bot.get_chat_member(GROUP, 3)).status == "left"
    assert (await bot.get_chat_member(USER, USER)).status == "member"  # a private chat: its user
    with pytest.raises(TelegramBadRequest, match="invalid user_id"):
        await bot.get_chat_member(GROUP, 0)


async def test_sticker_photo_commands_and_chat(bot, api):
    sticker = Update.model_validate(api.sticker_message(USER)).message.sticker
    assert sticker.emoji == "😂"
    photo = Update.model_validate(api.photo_message(USER, caption="смешно")).message
    assert photo.caption == "смешно" and len(photo.photo) == 3
    assert await bot.set_my_commands([BotCommand(command="joke", description="Анекдот")])
    assert [c.command for c in await bot.get_my_commands()] == ["joke"]
    assert await bot.delete_my_commands() and await bot.get_my_commands() == []
    assert (await bot.get_chat(USER)).type == "private"
    assert await bot.send_chat_action(USER, "typing")
    assert await bot.delete_webhook(drop_pending_updates=True) and api.pending_updates == []


async def test_raw_http_json_urlencoded_errors_and_draft(api):
    base = f"{api.base_url}/bot{api.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}/bot123:wrong/getMe") as r:
            assert r.status == 401 and (await r.json())["description"] == "Unauthorized"
        async with http.post(f"{base}/getStarTransactions") as r:
            assert r.status == 404 and (await r.json()) == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{base}/sendMessage", json={"chat_id": USER, "text": "json"}) as r:
            assert (await r.json())["result"]["text"] == "json"
        async with http.post(f"{base}/sendMessage", data={"chat_id": str(USER), "text": "form"}) as r:
            assert (await r.json())["result"]["message_id"] == 2
        async with http.get(f"{base}/getMe") as r:
            assert (await r.json())["result"]["username"] == "rujokes_test_bot"
        for text in ("Штир", "Штирлиц шёл"):
            async with http.post(f"{base}/sendMessageDraft", json={"chat_id": USER, "draft_id": 7, "text": text}) as r:
                assert (await r.json()) == {"ok": True, "result": True}
        async with http.post(f"{base}/sendMessageDraft", json={"chat_id": GROUP, "draft_id": 7, "text": "x"}) as r:
            assert r.status == 400
        api.fail_next("getMe", retry_after=3)
        async with http.get(f"{base}/getMe") as r:
            assert r.status == 429 and (await r.json()) == {
                "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3}}
    assert [d["text"] for d in api.drafts[USER]] == ["Штир", "Штирлиц шёл"]


async def test_telegram_limits_on_buttons_results_and_callback_answers(api):
    """What Telegram refuses with 400, so that a bot exceeding a limit fails its tests as it would in production."""
    base = f"{api.base_url}/bot{api.token}"

    def keyboard(data: str) -> dict:
        return {"inline_keyboard": [[{"text": "Ещё", "callback_data": data}]]}

    async with aiohttp.ClientSession() as http:
        async def call(method: str, **params) -> tuple[int, dict]:
            async with http.post(f"{base}/{method}", json=params) as response:
                return response.status, await response.json()

        assert (await call("sendMessage", chat_id=USER, text="ok", reply_markup=keyboard("ж" * 32)))[0] == 200
        status, body = await call("sendMessage", chat_id=USER, text="x", reply_markup=keyboard("ж" * 33))  # 66 bytes
        assert status == 400 and body["description"] == "Bad Request: BUTTON_DATA_INVALID"
        assert (await call("editMessageText", chat_id=USER, message_id=1, text="y", reply_markup=keyboard("")))[0] == 400

        query = api.inject_update({"inline_query": {"id": "raw-q", "from": api.make_user(USER), "query": "",
                                                    "offset": ""}})["inline_query"]  # raw queries are open too
        article = {"type": "article", "id": "a" * 64, "title": "t", "input_message_content": {"message_text": "m"}}
        assert (await call("answerInlineQuery", inline_query_id=query["id"], results=[article]))[0] == 200
        for bad, error in [({"id": "a" * 65}, "RESULT_ID_INVALID"), ({"reply_markup": keyboard("x" * 65)},
                           "BUTTON_DATA_INVALID"), ({"input_message_content": {"message_text": "я" * 4097}}, "too long")]:
            status, body = await call("answerInlineQuery", inline_query_id=query["id"], results=[{**article, **bad}])
            assert status == 400 and error in body["description"]
        status, body = await call("answerInlineQuery", inline_query_id=query["id"], results=[],
                                  button={"text": "hint", "start_parameter": "no spaces allowed"})
        assert status == 400 and body["description"] == "Bad Request: START_PARAM_INVALID"

        press = api.inject_update({"callback_query": {"id": "raw-cb", "from": api.make_user(USER), "data": "x",
                                                      "chat_instance": "1"}})["callback_query"]
        status, body = await call("answerCallbackQuery", callback_query_id=press["id"], text="я" * 201)
        assert status == 400 and body["description"] == "Bad Request: MESSAGE_TOO_LONG"
        assert (await call("answerCallbackQuery", callback_query_id=press["id"], text="я" * 200))[0] == 200


async def test_control_api_over_http(api):
    async with aiohttp.ClientSession() as http:
        inject = {"user": USER, "text": "привет"}
        async with http.post(f"{api.base_url}/_control/private_message", json=inject) as r:
            update = (await r.json())["result"]
        assert api.pending_updates == [update]
        reply = {"chat_id": USER, "text": "ответ"}
        async with http.post(f"{api.base_url}/bot{api.token}/sendMessage", json=reply) as r:
            assert r.status == 200
        async with http.get(f"{api.base_url}/_control/wait_for_call", params={"method": "sendMessage"}) as r:
            assert (await r.json())["result"]["params"]["text"] == "ответ"
        async with http.get(f"{api.base_url}/_control/messages", params={"chat_id": USER}) as r:
            assert (await r.json())["result"] == ["ответ"]
        async with http.get(f"{api.base_url}/_control/wait_for_call",
                            params={"method": "editMessageText", "timeout": "0.1"}) as r:
            assert r.status == 408


async def test_wait_for_call_with_predicate(bot, api):
    mark = api.mark()

    async def reply_later():
        await asyncio.sleep(0.05)
        await bot.send_message(USER, "не то")
        await bot.send_message(USER, "Анекдот про Вовочку")

    task = asyncio.create_task(reply_later())
    call = await api.wait_for_call("sendMessage", lambda p: "Вовочк" in p["text"], timeout=2, since=mark)
    assert call.params["text"] == "Анекдот про Вовочку"
    method, params, _ = call
    assert method == "sendMessage"
    await task
    with pytest.raises(TimeoutError):
        await api.wait_for_call("editMessageText", timeout=0.05)


def test_thread_mode_for_sync_tests():
    api = FakeBotAPI.start_in_thread(token="42:abc")
    try:
        api.private_message(USER, "/joke")
        body = json.dumps({"timeout": 1}).encode()
        request = urllib.request.Request(f"{api.base_url}/bot42:abc/getUpdates", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["result"][0]["message"]["text"] == "/joke"
        api.wait_for_call_blocking("getUpdates", timeout=2)
    finally:
        api.stop()
