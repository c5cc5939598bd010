"""The bot end to end, journey by journey: the real `rujokes-bot` and `rujokes-worker` processes
(tiny random models) against a real Redis and a fake Telegram Bot API.

The stack is shared with test_bot_e2e_limits.py (one per session). Each test sets up what it needs (the
active size, a joke of each size for /stats), so any one of them passes alone or in any order.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from bot.telegram import texts as texts_module
from bot.telegram.prompts import CLASSIC_OPENINGS
from bot.telegram.texts import EN
from bot.telegram.texts import RU as texts
from rujokes_model import ByteLevelBPETokenizer
from tests.e2e_stack import (
    ADMIN_ID,
    BOT_USERNAME,
    JOKE_BUTTONS,
    Stack,
    button_texts,
    calls_to,
    is_joke,
    wait_until,
)

# -- journey 6: /start, /help, the command menu ----------------------------------------------------------

def test_command_menu_is_registered_with_set_my_commands(stack):
    def current_menus() -> dict[tuple[str, str], list[dict[str, str]]]:
        return {(json.loads(key)[0]["type"], json.loads(key)[1]): commands for key, commands in stack.api.commands.items()}
    menus = wait_until(lambda: len(current_menus()) == 4 and current_menus(), 10,
                       "the public and the admin menu, in Russian and in English")
    public = list(texts_module.COMMAND_NAMES)
    for language, t in (("", texts), ("en", EN)):  # Russian for every client, English for English ones
        assert [c["command"] for c in menus["default", language]] == public
        assert [c["command"] for c in menus["chat", language]] == public + list(texts_module.ADMIN_COMMAND_NAMES)
        assert [c["description"] for c in menus["default", language]] == [t.command(name) for name in public]
    assert menus["default", ""][0]["description"] != menus["default", "en"][0]["description"]


def test_start_and_help_explain_the_bot_in_russian(stack):
    user = stack.new_user()
    stack.api.private_message(user, "/start")
    assert stack.wait_for_reply(user)["text"] == texts.START
    stack.api.private_message(user, "/help")
    assert f"@{BOT_USERNAME}" in stack.wait_for_reply(user, nth=2)["text"]


# -- journey 1: private chats ---------------------------------------------------------------------------

def test_private_joke_shows_typing_streams_drafts_and_ends_with_the_full_joke(stack):
    user, since = stack.new_user(), time.time()
    stack.api.private_message(user, "/joke Штирлиц пришел домой")
    joke = stack.wait_for_reply(user)
    assert joke["text"].startswith("Штирлиц пришел домой") and is_joke(joke)
    first_action = calls_to(stack, "sendChatAction", user, since)[0]
    assert first_action.params["action"] == "typing"
    assert first_action.time <= calls_to(stack, "sendMessage", user)[0].time
    drafts = stack.api.drafts[user]
    assert drafts[0]["text"] == ""  # "Thinking…" at once
    streamed = [d["text"] for d in drafts[1:]]
    assert streamed and all(text.startswith("Штирлиц пришел домой") for text in streamed)
    assert joke.get("reply_to_message", {}).get("text") == "/joke Штирлиц пришел домой"


def test_in_a_private_chat_with_topics_the_drafts_and_the_joke_stay_in_the_topic_asked_in(stack):
    user, topic = stack.new_user(), 12
    stack.api.private_message(user, "/joke Штирлиц пришел домой", topic=topic)
    joke = stack.wait_for_reply(user)
    assert is_joke(joke) and joke.get("message_thread_id") == topic
    assert stack.api.drafts[user] and all(draft["message_thread_id"] == topic for draft in stack.api.drafts[user])


def test_joke_without_text_starts_from_a_classic_opening(stack):
    user = stack.new_user()
    stack.api.private_message(user, "/joke")
    joke = stack.wait_for_reply(user)
    assert is_joke(joke) and joke["text"].startswith(CLASSIC_OPENINGS)


def test_plain_text_in_a_private_chat_is_a_prompt(stack):
    user = stack.new_user()
    stack.api.private_message(user, "Приходит мужик к врачу")
    joke = stack.wait_for_reply(user)
    assert is_joke(joke) and joke["text"].startswith("Приходит мужик к врачу")


def test_without_drafts_a_placeholder_is_edited_into_the_joke(stack):
    user, since = stack.new_user(), time.time()
    stack.api.fail_next("sendMessageDraft", error_code=400, description="Bad Request: TEXTDRAFT_PEER_INVALID")
    stack.api.private_message(user, "/joke Вовочка приходит в школу")
    joke = stack.wait_for_reply(user)
    assert is_joke(joke) and joke["text"].startswith("Вовочка приходит в школу")
    assert len(stack.bot_messages(user)) == 1, "the placeholder itself became the joke"
    placeholder = calls_to(stack, "sendMessage", user, since)[0]
    assert placeholder.params["text"] == texts.PLACEHOLDER
    assert calls_to(stack, "editMessageText", user, since)


def test_an_emoji_prompt_cut_to_fit_the_context_never_shows_a_broken_character(stack):
    """The worker cuts a prompt too long for the model's context; a byte-level token may hold part of an
    emoji, yet no draft, message or edit holds U+FFFD (issue #20: replies began with one)."""
    model_dir = Path(stack.worker_env["MODEL_NANO"])
    tokenizer = ByteLevelBPETokenizer.from_pretrained(model_dir)
    context = json.loads((model_dir / "config.json").read_text())["max_seq_len"]
    budget = context - int(stack.bot_env["MAX_NEW_TOKENS"])
    prompts = ["😀" * 40, "😀" * 40 + "!"]
    assert any(tokenizer.starts_mid_character(tokenizer.encode(p)[-budget]) for p in prompts)  # a plain cut splits one
    chats = [stack.new_user() for _ in prompts] + [stack.new_group()]
    for chat, prompt in zip(chats, prompts):
        stack.api.private_message(chat, f"/joke {prompt}")
    stack.api.group_message(chats[-1], stack.new_user(), f"/joke {prompts[-1]}")  # a placeholder, then edits
    for chat in chats:
        joke = stack.wait_for_reply(chat, timeout=30)
        assert is_joke(joke) and joke["text"].startswith("😀")
        shown = [m["text"] for m in stack.bot_messages(chat)] + [d["text"] for d in stack.api.drafts.get(chat, [])]
        shown += [c.params["text"] for method in ("sendMessage", "editMessageText") for c in calls_to(stack, method, chat)]
        assert len(shown) > 2 and not [text for text in shown if "\ufffd" in text]


# -- journey 2: groups ----------------------------------------------------------------------------------

def test_group_command_with_the_bot_mention_edits_a_placeholder_into_the_joke(stack):
    group, user, since = stack.new_group(), stack.new_user(), time.time()
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} Встречаются как-то русский, немец и француз")
    joke = stack.wait_for_reply(group)
    assert is_joke(joke) and joke["text"].startswith("Встречаются как-то русский, немец и француз")
    assert calls_to(stack, "sendMessage", group, since)[0].params["text"] == texts.PLACEHOLDER
    assert group not in stack.api.drafts  # drafts exist in private chats only


def test_a_command_for_another_bot_is_ignored(stack):
    group, user = stack.new_group(), stack.new_user()
    stack.api.group_message(group, user, "/joke@other_bot Штирлиц")
    # A marker that goes the way a handled /joke would (placeholder, queue, worker, edit), sent after it: once
    # the marker's joke is there, a handled first command would long have sent its own placeholder.
    stack.api.group_message(group, user, f"/joke@{BOT_USERNAME} Маркер")
    marker = stack.wait_for_reply(group, timeout=60)
    assert is_joke(marker) and marker["text"].startswith("Маркер")
    assert [m["text"] for m in stack.bot_messages(group)] == [marker["text"]]


def test_joke_as_a_reply_uses_the_replied_message_as_the_opening(stack):
    group, author, asker = stack.new_group(), stack.new_user(), stack.new_user()
    original = stack.api.group_message(group, author, "Поручик Ржевский на балу")["message"]
    stack.api.group_message(group, asker, "/joke", reply_to=original)
    joke = stack.wait_for_reply(group)
    assert is_joke(joke) and joke["text"].startswith("Поручик Ржевский на балу")


# -- journey 3: inline mode -----------------------------------------------------------------------------

def test_inline_query_offers_ready_variants_quickly(stack):
    user = stack.new_user()
    query_id = stack.api.inline_query(user, "Штирлиц пришел домой")["inline_query"]["id"]
    # "Quickly" is the bot's own INLINE_WAIT_S: it answers with the variants finished by then, else with a
    # ✍️ article (next test). So finished variants in the answer are the proof, not a wall-clock bound.
    answer = stack.inline_answer(query_id, timeout=30)
    assert answer["cache_time"] == 5 and answer["is_personal"] is True
    results = answer["results"]
    assert 1 <= len(results) <= 2
    for result in results:
        assert result["type"] == "article"
        assert result["input_message_content"]["message_text"].startswith("Штирлиц пришел домой")
        assert [b["text"] for b in result["reply_markup"]["inline_keyboard"][0]] == JOKE_BUTTONS
    # The variant, once sent, takes votes like any joke.
    stack.api.chosen_inline_result(user, results[0]["id"], "Штирлиц пришел домой", inline_message_id="inl-vote")
    press = stack.api.press_button(user, "inl-vote", texts.BUTTON_UP)
    assert stack.callback_answer(press["callback_query"]["id"])["text"] == texts.VOTE_NEW.format(vote="👍")


def test_inline_variants_of_a_long_opening_preview_what_follows_it(stack):
    """Every variant starts with the opening: a preview of its first 120 characters showed the same words in
    each, the differences past what a client shows."""
    opening = "Приходит мужик к врачу и говорит: доктор, у меня"
    answer = stack.inline_answer(stack.api.inline_query(stack.new_user(), opening)["inline_query"]["id"], timeout=30)
    assert answer["results"]
    for result in answer["results"]:
        text = result["input_message_content"]["message_text"]
        assert text.startswith(opening)
        preview = result["description"]
        assert preview.startswith("…") and "Приходит" not in preview and "у меня" + text[len(opening):][:20] in preview


def test_empty_inline_query_gets_a_hint(stack):
    query_id = stack.api.inline_query(stack.new_user(), "")["inline_query"]["id"]
    answer = stack.inline_answer(query_id)
    assert answer["results"] == [] and answer["button"]["text"] == texts.INLINE_HINT


def test_inline_without_ready_variants_writes_the_joke_into_the_chosen_message(stack):
    user, prompt = stack.new_user(), "Армянское радио спрашивают"
    stack.pause_worker()
    try:
        query_id = stack.api.inline_query(user, prompt)["inline_query"]["id"]
        (article,) = stack.inline_answer(query_id)["results"]
        assert article["input_message_content"]["message_text"] == texts.PLACEHOLDER
        assert [b["text"] for b in article["reply_markup"]["inline_keyboard"][0]] == [texts.BUTTON_WRITE]
        stack.api.chosen_inline_result(user, article["id"], prompt, inline_message_id="inl-chosen")
        with stack.redis() as client:
            high = f"{stack.prefix}requests:high"
            wait_until(lambda: any("inline_chosen" in e[1]["data"] for e in client.xrange(high)), 10,
                       "the chosen result's request")
    finally:
        stack.resume_worker()
    written = wait_until(lambda: finished_inline_joke(stack, "inl-chosen"), 20, "the joke in the inline message")
    assert written["text"].startswith(prompt)
    # Without inline feedback (no chosen_inline_result) the article's button starts the joke.
    stack.api.inline_messages["inl-button"] = {"text": texts.PLACEHOLDER, "reply_markup": article["reply_markup"]}
    stack.api.press_button(user, "inl-button", texts.BUTTON_WRITE)
    written = wait_until(lambda: finished_inline_joke(stack, "inl-button"), 20, "the joke started by the button")
    assert written["text"].startswith(prompt)


def finished_inline_joke(stack: Stack, inline_message_id: str) -> dict | None:
    message = stack.api.inline_messages.get(inline_message_id) or {}
    return message if button_texts(message) == JOKE_BUTTONS else None


# -- journey 4: buttons ---------------------------------------------------------------------------------

def test_more_button_writes_another_joke_with_the_same_opening(stack):
    user = stack.new_user()
    stack.api.private_message(user, "/joke Идет медведь по лесу")
    first = stack.wait_for_reply(user)
    press = stack.api.press_button(user, first, texts.BUTTON_MORE)
    assert stack.callback_answer(press["callback_query"]["id"])["text"] == texts.MORE_STARTED
    second = stack.wait_for_reply(user, nth=2)
    assert is_joke(second) and second["text"].startswith("Идет медведь по лесу")


def test_votes_count_once_per_user_and_a_vote_can_be_changed(stack):
    use_size(stack, "nano")  # the counts below are nano's
    user, other = stack.new_user(), stack.new_user()
    stack.api.private_message(user, "/joke Сидят два программиста")
    joke = stack.wait_for_reply(user)
    with stack.redis() as client:
        def counts() -> tuple[int, int]:
            fields = client.hgetall(f"{stack.prefix}bot:stats:size:nano")
            return int(fields.get("up", 0)), int(fields.get("down", 0))

        def vote(who: int, button: str) -> str:
            press = stack.api.press_button(who, joke, button)
            return stack.callback_answer(press["callback_query"]["id"])["text"]

        up, down = counts()
        assert vote(user, texts.BUTTON_UP) == texts.VOTE_NEW.format(vote="👍")
        assert vote(user, texts.BUTTON_UP) == texts.VOTE_SAME.format(vote="👍")
        assert counts() == (up + 1, down)
        assert vote(user, texts.BUTTON_DOWN) == texts.VOTE_CHANGED.format(vote="👎")
        assert counts() == (up, down + 1)
        assert vote(other, texts.BUTTON_DOWN) == texts.VOTE_NEW.format(vote="👎")
        assert counts() == (up, down + 2)


# -- journey 5: admins ----------------------------------------------------------------------------------

def use_size(stack: Stack, size: str) -> None:
    """Make `size` the active one (whatever an earlier test left)."""
    reply = stack.admin_reply(f"/model {size}")
    assert reply in {texts.MODEL_SWITCHED.format(old=old, new=size) for old in ("nano", "mini")}, reply
    with stack.redis() as client:
        assert client.hget(f"{stack.prefix}active_size", "size") == size


def test_model_shows_the_active_size_and_what_workers_have(stack):
    use_size(stack, "nano")
    reply = stack.admin_reply("/model")
    assert "Активная модель: nano" in reply and "Доступны у воркеров: mini, nano" in reply


def test_switching_to_mini_reaches_the_worker_and_is_logged(stack):
    use_size(stack, "nano")
    assert stack.admin_reply("/model mini") == texts.MODEL_SWITCHED.format(old="nano", new="mini")
    try:
        with stack.redis() as client:
            assert client.hget(f"{stack.prefix}active_size", "size") == "mini"
            before = int(client.hget(f"{stack.prefix}bot:stats:size:mini", "jokes") or 0)
            user = stack.new_user()
            stack.api.private_message(user, "/joke Штирлиц шел по лесу")
            assert is_joke(stack.wait_for_reply(user))
            assert int(client.hget(f"{stack.prefix}bot:stats:size:mini", "jokes")) == before + 1
    finally:
        stack.admin_reply("/model nano")
    log = stack.bot_log.read_text()
    assert f"admin action user_id={ADMIN_ID} chat_id={ADMIN_ID} action='model' args='mini' " \
           "outcome='switched nano -> mini'" in log


def test_switching_to_a_size_no_worker_has_is_refused(stack):
    use_size(stack, "nano")
    reply = stack.admin_reply("/model small")
    assert reply == texts.MODEL_UNKNOWN.format(size="small", available="mini, nano")
    with stack.redis() as client:
        assert client.hget(f"{stack.prefix}active_size", "size") == "nano"


def test_non_admins_get_a_polite_refusal_and_nothing_switches(stack):
    use_size(stack, "nano")
    user = stack.new_user()
    assert stack.admin_reply("/model mini", user_id=user) == texts.ADMIN_ONLY
    assert stack.admin_reply("/ban 42", user_id=user) == texts.ADMIN_ONLY
    assert stack.admin_reply("/broadcast привет", user_id=user) == texts.ADMIN_ONLY
    with stack.redis() as client:
        assert client.hget(f"{stack.prefix}active_size", "size") == "nano"
    assert f"admin action user_id={user} chat_id={user} action='model' args='mini' " \
           "outcome='refused: not an admin'" in stack.bot_log.read_text()


def test_stats_show_queue_workers_latency_requests_and_votes(stack):
    for size in ("mini", "nano"):  # at least one joke of each size, whatever ran before
        use_size(stack, size)
        user = stack.new_user()
        stack.api.private_message(user, "/joke Сидит Вовочка на уроке")
        assert is_joke(stack.wait_for_reply(user))
    reply = stack.admin_reply("/stats")
    assert "Очередь: 0" in reply and "Живые воркеры: 1" in reply and "e2e-worker" in reply
    assert re.search(r"Задержка: p50 \d+\.\d с, p95 \d+\.\d с \(измерено анекдотов: \d+\)", reply), reply
    assert re.search(r"Запросов всего: \d+", reply)
    with stack.redis() as client:
        for size in ("nano", "mini"):
            counts = client.hgetall(f"{stack.prefix}bot:stats:size:{size}")
            assert int(counts["jokes"]) >= 1
            assert f"{size}: анекдотов {counts['jokes']}, 👍 {counts.get('up', 0)}, 👎 {counts.get('down', 0)}" in reply
