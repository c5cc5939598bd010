"""Groups the natural way and per-chat /settings, end to end: the real bot and worker against a real Redis and
the fake Bot API (issue #18). Same shared stack as test_bot_e2e.py; every test uses a group and users of its
own, and the one that restarts the bot leaves it running with the stack's settings.

The fake delivers every group message, as Telegram does with privacy mode off: so "ignored" here means the
bot saw the message and chose to stay quiet.
"""
from __future__ import annotations

import json

from bot.common.settings import Settings
from bot.telegram.signing import Signer, chat_scope
from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, Stack, button_texts, is_joke, wait_until

SHORT_TOKENS = 6  # LENGTH_SHORT_TOKENS of the stack (tests/e2e_stack.py)


def assert_only_the_marker_answered(stack: Stack, group: int, user: int) -> None:
    """A mention sent after the messages to ignore goes the way an answer to them would have (placeholder,
    queue, worker, edit): once its joke is there, an answer to an earlier message would long have started."""
    stack.api.group_message(group, user, f"@{BOT_USERNAME} Маркер")
    marker = stack.wait_for_reply(group, timeout=60)
    assert is_joke(marker) and marker["text"].startswith("Маркер"), marker
    assert [m["text"] for m in stack.bot_messages(group)] == [marker["text"]]


# -- groups, the natural way ---------------------------------------------------------------------------------

def test_start_in_a_group_says_how_to_ask_there_not_to_just_write_text(stack):
    """The private /start says "send the opening"; in a group such text is not meant for the bot and gets
    nothing, so /start there names the ways that work."""
    group, user = stack.new_group(), stack.new_user()
    stack.api.group_message(group, user, f"/start@{BOT_USERNAME}")
    said = stack.wait_for_reply(group)["text"]
    assert said == texts.START_GROUP.format(bot_username=BOT_USERNAME) and f"/joke@{BOT_USERNAME} " in said


def test_in_a_forum_the_joke_and_everything_around_it_go_to_the_topic_it_was_asked_in(stack):
    """Sent with allow_sending_without_reply, a reply names no topic by itself: the placeholder, the joke, the
    typing and a refusal must name the topic, or a deleted request puts them in the group's General."""
    group, user, topic = stack.new_group(), stack.new_user(), 77
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} Штирлиц пришел домой", topic=topic)
    joke = stack.wait_for_reply(group)
    assert is_joke(joke) and joke.get("message_thread_id") == topic, joke
    assert all(call.params.get("message_thread_id") == topic for call in stack.api.calls("sendChatAction")
               if call.params.get("chat_id") == group)
    stack.api.press_button(user, joke, texts.BUTTON_MORE)  # 🔁 Ещё: a new joke in the same topic
    more = stack.wait_for_reply(group, nth=2, timeout=60)
    assert is_joke(more) and more.get("message_thread_id") == topic, more
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} " + "очень " * 80, topic=topic)  # too long
    refusal = stack.wait_for_reply(group, nth=3)
    assert not is_joke(refusal) and refusal.get("message_thread_id") == topic, refusal
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} Вовочка")  # General: no topic named
    assert "message_thread_id" not in stack.wait_for_reply(group, nth=4, timeout=60)


def test_a_mention_anywhere_in_a_group_message_is_answered_without_the_mention(stack):
    group, user = stack.new_group(), stack.new_user()
    asked = stack.api.group_message(group, user, f"Слушай, @{BOT_USERNAME}, Штирлиц пришел домой")["message"]
    joke = stack.wait_for_reply(group)
    assert is_joke(joke) and joke["text"].startswith("Слушай, Штирлиц пришел домой"), joke["text"]
    assert joke["reply_to_message"]["message_id"] == asked["message_id"]


def test_a_text_mention_of_the_bot_is_a_mention_too(stack):
    """A user picked from the member list is a text_mention entity carrying the bot's user id, not @username."""
    group, user = stack.new_group(), stack.new_user()
    entity = {"type": "text_mention", "offset": 0, "length": 3, "user": stack.api.bot_user}
    stack.api.group_message(group, user, "Бот Вовочка приходит в школу", entities=[entity])
    joke = stack.wait_for_reply(group)
    assert is_joke(joke) and joke["text"].startswith("Вовочка приходит в школу"), joke["text"]


def test_group_messages_without_a_mention_of_the_bot_are_ignored(stack):
    group, user = stack.new_group(), stack.new_user()
    for text in ["Штирлиц пришел домой", f"пишите на joke{BOT_USERNAME}@example.com", f"@{BOT_USERNAME}_fan привет",
                 "@other_bot Штирлиц", f"https://t.me/{BOT_USERNAME}"]:
        stack.api.group_message(group, user, text)
    assert_only_the_marker_answered(stack, group, user)


def test_a_reply_to_the_bots_joke_starts_a_new_joke_from_the_replys_text(stack):
    group, user, other = stack.new_group(), stack.new_user(), stack.new_user()
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} Штирлиц шел по лесу")
    first = stack.wait_for_reply(group)
    assert is_joke(first)
    reply = stack.api.group_message(group, other, "Приходит мужик в магазин", reply_to=first)["message"]
    second = stack.wait_for_reply(group, nth=2)
    assert is_joke(second) and second["text"].startswith("Приходит мужик в магазин"), second["text"]
    assert second["reply_to_message"]["message_id"] == reply["message_id"]


def test_replies_to_someone_else_or_to_a_bot_message_that_is_no_joke_are_ignored(stack):
    group, author, replier = stack.new_group(), stack.new_user(), stack.new_user()
    original = stack.api.group_message(group, author, "Поручик Ржевский на балу")["message"]
    stack.api.group_message(group, replier, "Вовочка приходит в школу", reply_to=original)
    stack.api.group_message(group, author, f"/settings@{BOT_USERNAME}")
    settings_message = stack.wait_for_reply(group)
    stack.api.group_message(group, replier, "Армянское радио спрашивают", reply_to=settings_message)
    stack.api.group_message(group, replier, f"@{BOT_USERNAME} Маркер")
    marker = wait_until(lambda: [m for m in stack.finished_messages(group) if is_joke(m)], 60, "the marker's joke")[0]
    assert marker["text"].startswith("Маркер")
    assert [m["text"] for m in stack.bot_messages(group)] == [settings_message["text"], marker["text"]]


# -- /settings ------------------------------------------------------------------------------------------------

def settings_reply(stack: Stack, chat: int, user: int) -> dict:
    """Send /settings (addressed to the bot in a group) and return the bot's reply to it."""
    text = "/settings" if chat > 0 else f"/settings@{BOT_USERNAME}"
    sent = (stack.api.private_message(user, text) if chat > 0 else stack.api.group_message(chat, user, text))["message"]

    def reply() -> dict | None:
        return next((m for m in stack.bot_messages(chat)
                     if (m.get("reply_to_message") or {}).get("message_id") == sent["message_id"]), None)
    return wait_until(reply, 10, f"a reply to {text} in chat {chat}")


def press(stack: Stack, user: int, message: dict, button: str) -> dict:
    """Press a button of a message (its current version) and return the callback's answer."""
    query = stack.api.press_button(user, (message["chat"]["id"], message["message_id"]), button)
    return stack.callback_answer(query["callback_query"]["id"])


def current(stack: Stack, message: dict) -> dict:
    return stack.api.messages[(message["chat"]["id"], message["message_id"])]


def test_settings_show_the_chats_settings_with_a_keyboard(stack):
    user = stack.new_user()
    shown = settings_reply(stack, user, user)
    assert shown["text"].startswith("⚙️ Настройки этого чата\nДлина анекдотов: обычные\nФантазия: обычная")
    assert "Модель: как у всех" in shown["text"]  # CHAT_SIZES=nano,mini
    assert button_texts(shown) == ["Короткие", "✓ Обычные", "Длинные", "Сдержанная", "✓ Обычная", "Буйная",
                                   "✓ Как у всех", "nano", "mini"]
    assert press(stack, user, shown, "Буйная")["text"] == texts.SETTINGS_CHANGED.format(setting="Фантазия",
                                                                                        value="Буйная")
    # The keyboard is edited after the press is answered: wait for its tick. In a private chat its user decides.
    wait_until(lambda: "✓ Буйная" in button_texts(current(stack, shown)), 20, "the keyboard's new tick")


def test_in_a_group_a_member_who_is_no_admin_is_refused_and_nothing_changes(stack):
    group, admin, member = stack.new_group(), stack.new_user(), stack.new_user()
    stack.api.set_chat_member(group, admin, "administrator")
    shown = settings_reply(stack, group, admin)
    stack.api.group_message(group, member, "привет")  # a member of the group, not an admin
    answer = press(stack, member, shown, "Короткие")
    assert answer["text"] == texts.SETTINGS_ADMINS_ONLY and answer["show_alert"] is True
    asked = [c.params for c in stack.api.calls("getChatMember") if c.params.get("chat_id") == group]
    assert asked == [{"chat_id": group, "user_id": member}]
    with stack.redis() as client:
        assert client.hgetall(f"{stack.prefix}bot:chat:{group}:settings") == {}
    assert button_texts(current(stack, shown))[:3] == ["Короткие", "✓ Обычные", "Длинные"]
    assert f"chat setting user_id={member} chat_id={group} field='length' value='short' " \
           "outcome='refused: not a chat admin'" in stack.bot_log.read_text()


def test_forged_or_broken_settings_buttons_get_a_clear_message_and_change_nothing(stack):
    group, admin = stack.new_group(), stack.new_user()
    stack.api.set_chat_member(group, admin, "creator")
    shown = settings_reply(stack, group, admin)
    where = (group, shown["message_id"])
    # The bot's own key (CALLBACK_SECRET unset: derived from the token), to sign what it would never write.
    signer = Signer.from_settings(Settings(_env_file=None, bot_token=BOT_TOKEN))
    here = chat_scope(group)
    for data, expected in [
        # Unsigned, or signed for another chat: refused before any of their fields is believed.
        (f"cs:{group}:length:short", texts.SETTINGS_BAD_BUTTON),  # unsigned (an older bot's, or forged)
        (signer.sign(f"cs:{group}:length:short", chat_scope(group - 1)), texts.SETTINGS_BAD_BUTTON),  # copied
        (f"cs:{group}:length:" + "x" * 500, texts.SETTINGS_BAD_BUTTON),  # oversized
        (f"cs:{group}:colour:red", texts.SETTINGS_BAD_BUTTON),
        ("cs:not-a-chat:length:short", texts.SETTINGS_BAD_BUTTON),
        ("cs:", texts.SETTINGS_BAD_BUTTON),
        # Signed for this chat yet wrong inside (the checks behind the signature still hold).
        (signer.sign(f"cs:{group - 1}:length:short", here), texts.SETTINGS_OTHER_CHAT),
        (signer.sign(f"cs:{group}:size:small", here), texts.SETTINGS_NOT_OFFERED),  # CHAT_SIZES does not offer it
    ]:
        query = stack.api.callback_query(admin, where, data)["callback_query"]
        assert stack.callback_answer(query["id"])["text"] == expected, data
    with stack.redis() as client:
        assert client.hgetall(f"{stack.prefix}bot:chat:{group}:settings") == {}
        assert client.hgetall(f"{stack.prefix}bot:chat:{group - 1}:settings") == {}
    assert "Traceback" not in stack.bot_log.read_text(errors="replace")


def mention_request(stack: Stack, group: int, user: int, opening: str) -> dict:
    """Mention the bot in the group; return the request the bot queued for it, once its joke is shown."""
    jokes_before = sum(is_joke(m) for m in stack.finished_messages(group))
    with stack.watch_requests() as seen:
        stack.api.group_message(group, user, f"@{BOT_USERNAME} {opening}")
        request = wait_until(lambda: next((r for r in seen if r["prompt"] == opening), None), 30,
                             f"the request for {opening!r}")
    wait_until(lambda: sum(is_joke(m) for m in stack.finished_messages(group)) > jokes_before, 30, "its joke")
    return request


def worker_tokens(stack: Stack, request_id: str) -> int:
    """How many tokens the worker generated for a request (its JSON log line)."""
    for line in stack.worker_log.read_text(errors="replace").splitlines():
        if request_id in line and line.startswith("{"):
            record = json.loads(line)
            if record.get("request_id") == request_id and "tokens" in record:
                return record["tokens"]
    raise AssertionError(f"no log line of the worker for {request_id}")


def test_an_admins_settings_reach_the_next_request_and_outlive_a_bot_restart(stack):
    group, admin = stack.new_group(), stack.new_user()
    stack.api.set_chat_member(group, admin, "administrator")
    shown = settings_reply(stack, group, admin)
    assert press(stack, admin, shown, "Короткие")["text"] == texts.SETTINGS_CHANGED.format(setting="Длина",
                                                                                         value="Короткие")
    wait_until(lambda: "✓ Короткие" in button_texts(current(stack, shown)), 10, "the keyboard's tick to move")
    assert press(stack, admin, current(stack, shown), "nano")["text"] == texts.SETTINGS_CHANGED.format(
        setting="Модель", value="nano")
    # The second press asked Telegram nothing: who is an admin is cached.
    assert len([c for c in stack.api.calls("getChatMember") if c.params.get("chat_id") == group]) == 1

    request = mention_request(stack, group, admin, "Штирлиц пришел домой")
    assert request["sampling"]["max_new_tokens"] == SHORT_TOKENS and request["size"] == "nano"
    assert worker_tokens(stack, request["request_id"]) <= SHORT_TOKENS  # and the worker kept to it

    stack.restart_bot()  # the settings live in Redis, not in the bot
    assert "Длина анекдотов: короткие" in settings_reply(stack, group, admin)["text"]
    request = mention_request(stack, group, admin, "Штирлиц пришел домой снова")
    assert request["sampling"]["max_new_tokens"] == SHORT_TOKENS and request["size"] == "nano"
    # Another chat keeps the stack's own length.
    other = stack.new_group()
    assert mention_request(stack, other, admin, "Вовочка")["sampling"]["max_new_tokens"] == int(
        stack.bot_env["MAX_NEW_TOKENS"])
