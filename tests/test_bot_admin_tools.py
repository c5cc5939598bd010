"""Admin tools and per-user statistics: /ban and /unban, the allow-list mode, /broadcast with its confirmation,
the audit log, and /stats for everyone, through the real bot, worker and fake Bot API (the broadcast's
resume after a crash and the access rules also against a real Redis alone).
"""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.common.settings import Settings
from bot.telegram.access import AccessList
from bot.telegram.broadcast import Broadcasts
from bot.telegram.texts import RU
from bot.telegram.user_stats import opening_of
from tests.e2e_stack import ADMIN_ID, Stack, button_texts, is_joke, wait_until


def texts_in(stack: Stack, chat_id: int) -> list[str]:
    return [m.get("text", "") for m in stack.bot_messages(chat_id)]


def reply_to(stack: Stack, chat_id: int, text: str) -> str:
    """Send `text` and return the bot's next message in that chat."""
    before = len(stack.bot_messages(chat_id))
    if chat_id > 0:
        stack.api.private_message(chat_id, text)
    found = wait_until(lambda: len(stack.finished_messages(chat_id)) > before and stack.finished_messages(chat_id), 30,
                       f"an answer to {text!r}")
    return found[before]["text"] if len(found) > before else found[-1]["text"]


def admin_says(stack: Stack, text: str) -> str:
    return reply_to(stack, ADMIN_ID, text)



# -- /ban, /unban ----------------------------------------------------------------------------------------

def test_a_banned_user_is_told_once_gets_nothing_and_is_welcome_again_after_unban(stack):
    user = stack.new_user()
    joke = reply_to(stack, user, "/joke Штирлиц до бана")
    assert joke.startswith("Штирлиц до бана")
    assert admin_says(stack, f"/ban {user}") == RU.BAN_DONE.format(user_id=user)
    assert admin_says(stack, f"/ban {user}") == RU.BAN_ALREADY.format(user_id=user)
    assert reply_to(stack, user, "/joke Штирлиц после бана") == RU.ACCESS_BANNED
    count = len(stack.bot_messages(user))
    stack.api.private_message(user, "/joke ещё раз")  # told once an hour, not per message
    query = stack.api.press_button(user, next(m for m in stack.bot_messages(user) if is_joke(m)), RU.BUTTON_MORE)
    assert stack.callback_answer(query["callback_query"]["id"])["text"] == RU.ACCESS_BANNED
    inline = stack.api.inline_query(user, "Штирлиц")["inline_query"]["id"]
    assert stack.inline_answer(inline)["button"]["text"] == RU.INLINE_ACCESS_DENIED
    time.sleep(1)
    assert len(stack.bot_messages(user)) == count
    assert admin_says(stack, f"/unban {user}") == RU.UNBAN_DONE.format(user_id=user)
    assert reply_to(stack, user, "/joke Штирлиц после разбана").startswith("Штирлиц после разбана")
    assert admin_says(stack, f"/unban {user}") == RU.UNBAN_NOT_BANNED.format(user_id=user)


def test_ban_takes_an_id_or_a_reply_and_refuses_bad_ids_admins_and_non_admins(stack):
    outsider, group, member = stack.new_user(), stack.new_group(), stack.new_user()
    for bad in ("/ban", "/ban abc", "/ban -100123", "/ban 0", "/ban 1" + "0" * 30):
        assert admin_says(stack, bad) == RU.ADMIN_BAD_ID.format(command="ban"), bad
    assert admin_says(stack, f"/ban {ADMIN_ID}") == RU.BAN_ADMIN
    assert reply_to(stack, outsider, f"/ban {member}") == RU.ADMIN_ONLY
    message = stack.api.group_message(group, member, "спам")["message"]
    stack.api.group_message(group, ADMIN_ID, "/ban", reply_to=message)
    wait_until(lambda: RU.BAN_DONE.format(user_id=member) in texts_in(stack, group), 20, "the ban by reply")
    assert admin_says(stack, f"/unban {member}") == RU.UNBAN_DONE.format(user_id=member)


def test_every_admin_action_and_refused_attempt_is_in_the_audit_log(stack):
    outsider = stack.new_user()
    admin_says(stack, f"/ban {outsider}")
    admin_says(stack, f"/unban {outsider}")
    reply_to(stack, outsider, "/model nano")
    audit = admin_says(stack, "/audit")
    lines = audit.splitlines()
    assert lines[0] == RU.AUDIT_HEADER
    assert f"{outsider} · /model nano → refused: not an admin" in lines[1]
    assert f"/unban {outsider} → unbanned {outsider}" in lines[2]
    assert f"/ban {outsider} → banned {outsider}" in lines[3]


# -- ACCESS=allowlist ---------------------------------------------------------------------------------------

def test_with_an_allow_list_only_admins_and_allowed_users_and_chats_get_jokes(stack):
    user, group, member = stack.new_user(), stack.new_group(), stack.new_user()
    with stack.bot_with(ACCESS="allowlist"):
        assert reply_to(stack, user, "/joke Штирлиц") == RU.ACCESS_NOT_ALLOWED.format(user_id=user)
        assert admin_says(stack, "/joke Штирлиц для админа").startswith("Штирлиц для админа")
        assert admin_says(stack, f"/allow {user}") == RU.ALLOW_DONE.format(entity_id=user, note="")
        assert reply_to(stack, user, "/joke Штирлиц разрешён").startswith("Штирлиц разрешён")
        stack.api.group_message(group, member, "/joke Вовочка в группе")
        time.sleep(1.5)
        assert texts_in(stack, group) == []  # silent in groups
        assert admin_says(stack, f"/allow {group}") == RU.ALLOW_DONE.format(entity_id=group, note="")
        stack.api.group_message(group, member, "/joke Вовочка в разрешённой группе")
        wait_until(lambda: any(text.startswith("Вовочка в разрешённой группе") for text in texts_in(stack, group)),
                   60, "a joke in the allowed group")
        assert admin_says(stack, f"/disallow {user}") == RU.DISALLOW_DONE.format(entity_id=user)
        count = len(stack.bot_messages(user))
        stack.api.private_message(user, "/joke снова")
        time.sleep(1.5)
        assert len(stack.bot_messages(user)) == count  # refused, and told within the hour already
    # back to ACCESS=open: the list stays but does not apply
    assert admin_says(stack, f"/allow {user}").endswith(RU.ALLOW_OPEN_NOTE)
    assert reply_to(stack, stack.new_user(), "/joke Штирлиц открыт").startswith("Штирлиц открыт")


async def test_access_rules_on_redis(redis_client, key_prefix):
    settings = Settings(bot_token="1:x", admin_ids=[1], access="allowlist", _env_file=None)
    access = AccessList(redis_client, key_prefix, settings)
    assert await access.verdict(1, 1) == "ok"  # an admin, on no list
    assert await access.verdict(2, 2) == "not_allowed"
    await access.allow(-500)
    assert await access.verdict(2, -500) == "ok" and await access.verdict(2, 2) == "not_allowed"
    await access.ban(2, by=1)
    assert await access.verdict(2, -500) == "banned"  # a ban beats an allowed chat
    open_access = AccessList(redis_client, key_prefix, settings.model_copy(update={"access": "open"}))
    assert await open_access.verdict(3, 3) == "ok" and await open_access.verdict(2, 2) == "banned"
    assert await access.first_refusal(2) is True and await access.first_refusal(2) is False


# -- /broadcast -----------------------------------------------------------------------------------------------

def subscribed(stack: Stack) -> list[int]:
    with stack.redis() as client:
        return [int(chat) for chat in client.zrange(f"{stack.prefix}bot:daily:due", 0, -1)]


def test_broadcast_asks_for_confirmation_then_sends_every_subscriber_once(stack):
    users = [stack.new_user() for _ in range(3)]
    for user in users:
        assert reply_to(stack, user, "/daily 09:00").startswith("🗓")
    chats = subscribed(stack)
    text = "Завтра бот отдыхает с 10 до 11 <b>не HTML</b>"
    confirmation = admin_says(stack, f"/broadcast {text}")
    assert confirmation == RU.plural("BROADCAST_CONFIRM", len(chats), count=len(chats), text=text)
    message = next(m for m in stack.bot_messages(ADMIN_ID) if m.get("text") == confirmation)
    assert button_texts(message) == [RU.BUTTON_BROADCAST_SEND, RU.BUTTON_BROADCAST_CANCEL]
    send_data = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    outsider = stack.new_user()
    forged = stack.api.press_button(outsider, message, RU.BUTTON_BROADCAST_SEND)  # not an admin
    assert stack.callback_answer(forged["callback_query"]["id"])["text"] == RU.ADMIN_ONLY
    assert all(text not in texts_in(stack, user) for user in users)
    query = stack.api.press_button(ADMIN_ID, message, RU.BUTTON_BROADCAST_SEND)
    assert stack.callback_answer(query["callback_query"]["id"])["text"] == RU.plural("BROADCAST_STARTED", len(chats), count=len(chats))
    done = RU.BROADCAST_DONE.format(sent=len(chats), failed=0)
    wait_until(lambda: done in texts_in(stack, ADMIN_ID), 60, "the broadcast's report")
    for user in users:
        assert texts_in(stack, user).count(text) == 1
    again = stack.api.callback_query(ADMIN_ID, message, send_data)  # "Send" pressed again (a stale copy)
    assert stack.callback_answer(again["callback_query"]["id"])["text"] == RU.BROADCAST_NOT_PENDING
    time.sleep(1)
    assert all(texts_in(stack, user).count(text) == 1 for user in users)
    for user in users:
        reply_to(stack, user, "/daily off")


def test_a_cancelled_broadcast_sends_nothing_and_cannot_be_started(stack):
    user = stack.new_user()
    reply_to(stack, user, "/daily 10:00")
    confirmation = admin_says(stack, "/broadcast Отменённое объявление")
    message = next(m for m in stack.bot_messages(ADMIN_ID) if m.get("text") == confirmation)
    cancel = stack.api.press_button(ADMIN_ID, message, RU.BUTTON_BROADCAST_CANCEL)
    assert stack.callback_answer(cancel["callback_query"]["id"])["text"] == RU.BROADCAST_CANCELLED.format(sent=0)
    wait_until(lambda: RU.BROADCAST_CANCELLED.format(sent=0) in texts_in(stack, ADMIN_ID), 20, "the report")
    assert "Отменённое объявление" not in texts_in(stack, user)
    assert admin_says(stack, "/broadcast") == RU.BROADCAST_USAGE
    reply_to(stack, user, "/daily off")


async def test_a_broadcast_cut_short_by_a_crash_resumes_without_sending_anyone_twice(redis_client, key_prefix):
    sent: list[int] = []

    async def send(chat_id: int, text: str) -> None:
        if chat_id == 5 and not crashed.is_set():
            crashed.set()
            raise asyncio.CancelledError  # the process dies during this send
        sent.append(chat_id)

    crashed, reports = asyncio.Event(), []

    async def finished(record: dict[str, str]) -> None:
        reports.append(record)

    first = Broadcasts(redis_client, key_prefix, per_second=1000)
    broadcast_id = await first.create("привет", by=1, chat_id=1, language="ru")
    assert await first.begin(broadcast_id, list(range(1, 11)))
    assert not await first.begin(broadcast_id, list(range(1, 11)))  # a second "Send"
    with pytest.raises(asyncio.CancelledError):
        await first.run(broadcast_id, send, finished)
    assert sent == [1, 2, 3, 4] and reports == []
    await redis_client.delete(f"{key_prefix}bot:broadcast:{broadcast_id}:lease")  # its lease ran out
    second = Broadcasts(redis_client, key_prefix, per_second=1000)
    await second.resume(send, finished)
    await asyncio.wait_for(asyncio.gather(*second._runners.values()), 10)
    assert sent == [1, 2, 3, 4, 6, 7, 8, 9, 10]  # 5 was mid-send when it died: skipped, never doubled
    assert reports[0]["state"] == "done" and reports[0]["sent"] == "9"


# -- /stats ---------------------------------------------------------------------------------------------------

def test_opening_of_takes_the_first_words_without_case_or_edge_punctuation():
    assert opening_of("Штирлиц пришел домой, а там…") == "штирлиц пришел домой"
    assert opening_of("«Вовочка», — сказала учительница") == "вовочка сказала учительница"
    assert opening_of("   ") == "" and len(opening_of("а" * 500)) == 40


def test_stats_shows_a_user_their_jokes_votes_and_favourite_opening_and_admins_the_bots(stack):
    user = stack.new_user()
    assert reply_to(stack, user, "/stats") == RU.USER_STATS.format(jokes=0, up=0, down=0,
                                                                   opening=RU.USER_STATS_NO_OPENING)
    for nth, text in enumerate(("/joke Штирлиц пришел домой", "Штирлиц пришел домой.", "/joke Вовочка в школе"), 2):
        stack.api.private_message(user, text)
        assert is_joke(stack.wait_for_reply(user, nth=nth, timeout=60))
    joke = next(m for m in stack.bot_messages(user) if is_joke(m))
    for button in (RU.BUTTON_UP, RU.BUTTON_DOWN, RU.BUTTON_UP):  # a vote, changed, changed back: one 👍
        stack.callback_answer(stack.api.press_button(user, joke, button)["callback_query"]["id"])
    opening = RU.plural("USER_STATS_OPENING", 2, opening="штирлиц пришел домой", uses=2)
    assert opening.endswith("(2 раза)")
    assert reply_to(stack, user, "/stats") == RU.USER_STATS.format(jokes=3, up=1, down=0, opening=opening)
    assert admin_says(stack, "/stats").startswith(RU.STATS.split("\n")[0])
    assert admin_says(stack, "/stats me").startswith(RU.USER_STATS.split("\n")[0])
