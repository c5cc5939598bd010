"""The bot end to end under stress: rate limits, Telegram's flood control, hostile input, a full
queue, lost requests, a bot restart and dead workers. Same stack as test_bot_e2e.py; a test that stops
or pauses a process starts or resumes it before it ends.
"""
from __future__ import annotations

import re
import time

import pytest

from bot.queue.protocol import Delivery, JokeRequest
from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_USERNAME, Stack, calls_to, is_joke, stop_process, wait_until

# -- limits ---------------------------------------------------------------------------------------------

def test_rate_limit_refuses_after_the_burst_with_the_wait_time(stack):
    user = stack.new_user()
    for number in range(5):  # RATE_LIMIT_BURST=4
        stack.api.private_message(user, f"/joke Вовочка {number}")
    stack.wait_for_reply(user, nth=5, timeout=30)
    replies = stack.finished_messages(user)
    refusals = [m["text"] for m in replies if not is_joke(m)]
    assert len(refusals) == 1 and re.fullmatch(texts.RATE_LIMITED.replace("{seconds}", r"\d+"), refusals[0])
    assert sum(is_joke(m) for m in replies) == 4


def _retried_after_waiting(stack: Stack, method: str, chat_id: int, since: float) -> None:
    calls = calls_to(stack, method, chat_id, since)
    failed = [c for c in calls if c.error and c.error[0] == 429]
    assert len(failed) == 1
    later = [c for c in calls if c.time > failed[0].time]
    assert later and later[0].error is None
    assert later[0].time - failed[0].time >= 0.95, "retried before retry_after elapsed"


def test_flood_control_waits_retry_after_then_delivers_in_private(stack):
    user, since = stack.new_user(), time.time()
    stack.api.fail_next("sendMessage", error_code=429, retry_after=1)
    stack.api.private_message(user, "/joke Приходит мужик в магазин")
    assert is_joke(stack.wait_for_reply(user))
    _retried_after_waiting(stack, "sendMessage", user, since)


def test_flood_control_waits_retry_after_then_edits_in_a_group(stack):
    group, since = stack.new_group(), time.time()
    stack.api.fail_next("editMessageText", error_code=429, retry_after=1)
    stack.api.group_message(group, stack.new_user(), "/joke Штирлиц")
    assert is_joke(stack.wait_for_reply(group))
    _retried_after_waiting(stack, "editMessageText", group, since)


# -- hostile input --------------------------------------------------------------------------------------

JOKE, TOO_LONG, NOT_TEXT, UNKNOWN, ADMIN_ONLY, START, HELP, IGNORED = (
    "joke", "too_long", "not_text", "unknown", "admin_only", "start", "help", "ignored")
HOSTILE = [  # (id, text, or "sticker"/"photo" for non-text messages, expected outcome)
    ("joke-empty", "/joke", JOKE), ("joke-spaces", "/joke     ", JOKE), ("whitespace", "   \t  ", JOKE),
    ("newlines", "\n\n\n", JOKE), ("huge", "ж" * 4000, TOO_LONG), ("long-words", "Штирлиц " * 60, TOO_LONG),
    ("at-cap", "я" * 300, JOKE), ("emoji-only", "😂" * 40, JOKE), ("one-emoji", "🤡", JOKE),
    ("zwj-emoji", "👨‍👩‍👧‍👦 семья", JOKE), ("arabic", "مرحبا بالعالم", JOKE), ("hebrew", "שלום עולם", JOKE),
    ("bidi-override", "\u202eШтирлиц пришел\u202c", JOKE), ("rtl-mark", "\u200fשלום Штирлиц", JOKE),
    ("control-chars", "Штирлиц\x00\x07\x1b[31m пришёл", JOKE), ("nul-only", "\x00", JOKE),
    ("zero-width", "\u200b\u200b\u200b", JOKE), ("bom", "\ufeffВовочка", JOKE),
    ("html-bold", "<b>Штирлиц</b> & Мюллер", JOKE), ("script", "<script>alert(1)</script>", JOKE),
    ("entities", "&lt;b&gt; &amp; &#x27;", JOKE), ("html-link", '<a href="http://x">click</a>', JOKE),
    ("model-tokens", "Штирлиц <eos> пришел <pad> домой <bos>", JOKE),  # text to the model, not its control tokens
    ("open-tag", "/joke <i>незакрытый тег", JOKE), ("markdown", "*жирный* _курсив_ `код` [ссылка](http://x)", JOKE),
    ("url", "https://example.com/?a=<b>&c=d", JOKE), ("sql", "'; DROP TABLE jokes; --", JOKE),
    ("redis-protocol", "*1\r\n$4\r\nPING\r\n", JOKE), ("templates", "{{7*7}} ${jndi:ldap://x} %s %n", JOKE),
    ("zalgo", "З̶а̶л̶г̶о̶ т̷е̷к̷с̷т̷", JOKE), ("combining", "Вовочка" + "\u0301" * 50, JOKE),
    ("math-letters", "𝕊𝕥𝕚𝕣𝕝𝕚𝕥𝕫", JOKE), ("mixed-scripts", "Shtirlitz 漢字 ∑∫ 🙂", JOKE),
    ("digits", "1234567890", JOKE), ("one-letter", "а", JOKE), ("mention-only", f"@{BOT_USERNAME}", JOKE),
    ("triple-command", "/joke /joke /joke", JOKE), ("other-bot", "/joke@other_bot Штирлиц", IGNORED),
    ("uppercase-command", "/JOKE Штирлиц", UNKNOWN), ("unknown-command", "/unknown_command", UNKNOWN),
    ("start-args", "/start лишние аргументы", START), ("help-mention", f"/help@{BOT_USERNAME}", HELP),
    ("model-non-admin", "/model small", ADMIN_ONLY), ("ban-non-admin", "/ban 42", ADMIN_ONLY),
    ("sticker", "sticker", NOT_TEXT), ("photo", "photo", NOT_TEXT),
]


IGNORED_MARKER = "Маркер после игнорированного"


@pytest.fixture(scope="module")
def hostile_replies(stack):
    """Everything sent at once, each from a new user; then every reply, by input id."""
    chats = {}
    for input_id, text, _ in HOSTILE:
        user = chats[input_id] = stack.new_user()
        if text == "sticker":
            stack.api.sticker_message(user)
        elif text == "photo":
            stack.api.photo_message(user, caption="<b>подпись</b>")
        else:
            stack.api.private_message(user, text)
    expected_replies = [chats[i] for i, _, outcome in HOSTILE if outcome != IGNORED]
    wait_until(lambda: all(stack.finished_messages(chat) for chat in expected_replies), 120,
               f"replies to every hostile input; bot log:\n{stack.log_tail(stack.bot_log)}")
    # An ignored input's chat then gets a marker joke (placeholder, queue, worker, reply), sent long after it:
    # once the marker is answered, an answer to the ignored input would have come first.
    ignored = [chats[i] for i, _, outcome in HOSTILE if outcome == IGNORED]
    for chat in ignored:
        stack.api.private_message(chat, f"/joke {IGNORED_MARKER}")
    wait_until(lambda: all(stack.finished_messages(chat) for chat in ignored), 60, "the markers' jokes")
    return {input_id: stack.finished_messages(chat) for input_id, chat in chats.items()}


@pytest.mark.parametrize(("input_id", "text", "outcome"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_joke_or_a_clear_message(hostile_replies, input_id, text, outcome):
    replies = hostile_replies[input_id]
    if outcome == IGNORED:
        (marker,) = replies  # nothing but the marker sent after it
        assert is_joke(marker) and marker["text"].startswith(IGNORED_MARKER)
        return
    (reply,) = replies
    body = reply["text"]
    assert len(body.encode("utf-16-le")) // 2 <= 4096 and not reply.get("entities")
    if outcome == JOKE:
        assert is_joke(reply), body
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]", body)
        if text.startswith(("<b>", "&lt;", "Штирлиц <eos>")):
            assert body.startswith(text)  # sent as plain text: nothing parsed, nothing escaped, nothing dropped
    else:
        expected = {TOO_LONG: texts.plural("PROMPT_TOO_LONG", len(text.strip()), length=len(text.strip()), limit=300),
                    NOT_TEXT: texts.NOT_TEXT, UNKNOWN: texts.UNKNOWN_COMMAND, ADMIN_ONLY: texts.ADMIN_ONLY,
                    START: texts.START}.get(outcome)
        if outcome == HELP:
            assert body.startswith("Как пользоваться")
        else:
            assert body == expected


def test_no_call_used_parse_mode_and_none_failed_to_parse(stack, hostile_replies):
    calls = stack.api.calls()
    assert not [c.method for c in calls if c.params.get("parse_mode")]
    assert not [c.error for c in calls if c.error and "parse entities" in c.error[1]]
    assert not [c.error for c in calls if c.error and "too long" in c.error[1]]


# -- nothing hangs silently -----------------------------------------------------------------------------

def test_full_queue_is_refused_at_once_and_a_lost_request_times_out_with_an_apology(stack):
    waiting, refused = stack.new_user(), stack.new_user()
    stack.pause_worker()
    try:
        stack.api.private_message(waiting, "/joke Штирлиц пришел домой")
        with stack.redis() as client:
            wait_until(lambda: client.xlen(f"{stack.prefix}requests:normal"), 60, "the request in the queue")
            stale = JokeRequest(delivery=Delivery(inline_query_id="stale"), deadline=time.time() - 1)
            with client.pipeline() as pipe:
                for _ in range(100):  # MAX_QUEUE defaults to 100
                    pipe.xadd(f"{stack.prefix}requests:normal", {"data": stale.model_dump_json()})
                pipe.execute()
            queued = client.xlen(f"{stack.prefix}requests:normal")
            stack.api.private_message(refused, "/joke Вовочка")
            # "At once": refused when asked, not queued to time out later. So the refusal comes while the
            # waiting request (queued before it) has not yet timed out, and the queue did not grow.
            assert stack.wait_for_reply(refused, timeout=30)["text"] == texts.BUSY
            assert stack.finished_messages(waiting) == [], "the refusal came only after a request timeout"
            assert client.xlen(f"{stack.prefix}requests:normal") == queued
        assert stack.wait_for_reply(waiting, timeout=30)["text"] == texts.TIMEOUT  # REQUEST_TIMEOUT_S + grace
    finally:
        stack.resume_worker()
    with stack.redis() as client:
        wait_until(lambda: client.xlen(f"{stack.prefix}requests:normal") == 0, 30, "the worker to drain the queue")
    # The late "expired" answer edits the same message with the same text: "message is not modified",
    # which is no error, and no second message.
    def not_modified() -> list:
        return [c for c in calls_to(stack, "editMessageText", waiting) if c.error and "not modified" in c.error[1]]
    wait_until(not_modified, 10, "the late answer's edit")
    assert [m["text"] for m in stack.finished_messages(waiting)] == [texts.TIMEOUT]


def test_an_answer_outlives_a_bot_restart(stack):
    """The request is remembered in Redis and the result waits in the stream while no bot runs."""
    user = stack.new_user()
    # This request must outlive a bot's stop (seconds on a loaded machine), so it gets a deadline longer
    # than the stack's short one: the bot that submits it runs with REQUEST_TIMEOUT_S=60.
    short_timeout = stack.bot_env["REQUEST_TIMEOUT_S"]
    assert stop_process(stack.bot) == 0
    stack.bot_env["REQUEST_TIMEOUT_S"] = "60"
    started = len(stack.api.calls("setMyCommands"))
    try:
        stack.start_bot()
    finally:
        stack.bot_env["REQUEST_TIMEOUT_S"] = short_timeout  # the restart below is the stack's usual bot
    # Polling before the worker pauses: a bot still starting when the paused worker's heartbeat expires
    # would rightly answer "no workers" instead of queueing the request.
    wait_until(lambda: len(stack.api.calls("setMyCommands")) > started, 60, "the bot with the long deadline")
    stack.pause_worker()
    try:
        stack.api.private_message(user, "/joke Поручик Ржевский")
        with stack.redis() as client:
            wait_until(lambda: client.xlen(f"{stack.prefix}requests:normal"), 60, "the request in the queue")
            stopping = time.monotonic()
            assert stop_process(stack.bot) == 0, "SIGTERM stops the bot cleanly"
            assert time.monotonic() - stopping < 10
    finally:
        stack.resume_worker()
    with stack.redis() as client:
        wait_until(lambda: client.xlen(f"{stack.prefix}requests:normal") == 0, 20, "the answer, while the bot is down")
    assert stack.finished_messages(user) == []
    stack.start_bot()
    joke = stack.wait_for_reply(user, timeout=60)
    assert is_joke(joke) and joke["text"].startswith("Поручик Ржевский"), joke["text"]
    # Past its give-up time by now, yet answered: no apology follows the joke. The bot's sweep of overdue
    # requests runs on each round of its result reader, so by the time a later joke of the same user has
    # made its whole round trip, an apology would have been sent.
    stack.api.private_message(user, "/joke Поручик Ржевский снова")
    later = stack.wait_for_reply(user, nth=2, timeout=60)
    assert later["text"].startswith("Поручик Ржевский снова")
    assert [m["text"] for m in stack.finished_messages(user)] == [joke["text"], later["text"]]


def test_the_bot_log_has_no_tracebacks(stack, hostile_replies):
    log = stack.bot_log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def test_dead_workers_are_reported_within_seconds(stack):
    assert stop_process(stack.worker) == 0  # a clean stop removes the heartbeat at once
    try:
        user = stack.new_user()
        stack.api.private_message(user, "/joke Штирлиц")
        # "Within seconds": told at once that no worker is alive, rather than queued until the request times
        # out, which would read texts.TIMEOUT. So the text is the proof; the wait only bounds a failure.
        assert stack.wait_for_reply(user, timeout=30)["text"] == texts.WORKERS_DOWN
        with stack.redis() as client:
            assert client.xlen(f"{stack.prefix}requests:normal") == 0  # nothing was queued
        query_id = stack.api.inline_query(user, "Штирлиц")["inline_query"]["id"]
        assert stack.inline_answer(query_id, timeout=30)["button"]["text"] == texts.INLINE_WORKERS_DOWN
        assert texts.MODEL_NONE_AVAILABLE in stack.admin_reply("/model")
    finally:
        stack.restart_worker()  # the stack is shared: leave it as it was found
