"""Telegram in trouble (issue #20's fault matrix, the rows that run in seconds): the Bot API answering 5xx,
dropping connections, or hanging past the bot's timeout for a few seconds, while users ask for jokes in
private chats and groups. Nothing accepted may be lost; a 5xx or a reset (nothing was done) never doubles a
joke; a hang (done, but answered too late) can double a *sent* message, never an edited one.
"""
from __future__ import annotations

import time

import pytest

from bot.telegram.texts import RU
from tests.e2e_stack import Stack, is_joke, stop_process, wait_until

WINDOW_S = 5.0


def ask(stack: Stack) -> list[int]:
    """A /joke in a private chat and one in a group; their chat ids."""
    user, group = stack.new_user(), stack.new_group()
    stack.api.private_message(user, "/joke Штирлиц и сбой")
    stack.api.group_message(group, stack.new_user(), "/joke Вовочка и сбой")
    return [user, group]


def jokes_in(stack: Stack, chat: int) -> list[dict]:
    return [m for m in stack.bot_messages(chat) if is_joke(m)]


@pytest.mark.parametrize("kind", ["5xx", "reset"])
def test_a_bot_api_failing_for_seconds_delays_jokes_but_loses_and_doubles_none(stack, kind):
    stack.api.disrupt("*", kind, for_s=WINDOW_S)
    started = time.time()
    chats = ask(stack)
    for chat in chats:
        wait_until(lambda: jokes_in(stack, chat), 60, f"the joke in {chat} after {kind}")
    assert time.time() - started >= WINDOW_S - 1  # it came once Telegram was back, not through the outage
    time.sleep(RETRY_GRACE_S)
    for chat in chats:
        assert len(jokes_in(stack, chat)) == 1, stack.bot_messages(chat)
        leftovers = [m for m in stack.bot_messages(chat) if m.get("text") == RU.PLACEHOLDER]
        assert not leftovers  # a placeholder whose send failed was never made: nothing is left behind


RETRY_GRACE_S = 3.0  # past the delivery's retry pause: a second copy would have come by now



def test_a_bot_api_answering_past_the_timeout_loses_nothing_and_doubles_no_joke_it_answers_within_a_send_s_patience(
        stack):
    """Every call done, and answered 2.5 s later: past the bot's 1.5 s timeout, so edits and probes time out and are
    tried again (harmless), but a send waits SEND_PATIENCE times as long (3 s) and gets its answer: one copy."""
    with stack.bot_with(TELEGRAM_TIMEOUT_S="1.5"):
        stack.api.disrupt("*", "hang", for_s=WINDOW_S, hang_s=2.5)
        chats = ask(stack)
        for chat in chats:
            wait_until(lambda: jokes_in(stack, chat), 60, f"the joke in {chat} after the hang")
        time.sleep(RETRY_GRACE_S)
        for chat in chats:
            assert len(jokes_in(stack, chat)) == 1, stack.bot_messages(chat)


def test_a_long_hang_costs_a_private_joke_one_copy_not_one_per_retry(stack):
    """A send that timed out may have been done: the retry waits for Telegram to answer in time again.
    (Retried every timeout + RETRY_PAUSE_S instead, this window showed the joke three times.) Answers come 4 s
    late: past even a send's patience (3 s), so the bot cannot know whether the joke was sent, and sends it again."""
    with stack.bot_with(TELEGRAM_TIMEOUT_S="1.5"):
        user = stack.new_user()
        stack.api.disrupt("*", "hang", for_s=12, hang_s=4)
        stack.api.private_message(user, "/joke Штирлиц и долгий сбой")
        wait_until(lambda: jokes_in(stack, user), 90, "the joke after the long hang")
        time.sleep(12 + RETRY_GRACE_S)  # past the window, and past a retry after it
        found = jokes_in(stack, user)
        assert 1 <= len(found) <= 2, stack.bot_messages(user)
        assert len({m["text"] for m in found}) == 1


def test_a_bot_started_while_the_bot_api_fails_waits_for_it_and_then_answers(stack):
    assert stop_process(stack.bot) == 0
    stack.api.disrupt("*", "5xx", for_s=WINDOW_S)
    stack.start_bot()
    time.sleep(WINDOW_S)
    assert stack.bot.poll() is None, stack.log_tail(stack.bot_log)  # still there, not dead of a 502
    user = stack.new_user()
    stack.api.private_message(user, "/joke Штирлиц после аварии")
    assert is_joke(stack.wait_for_reply(user, timeout=60))


def test_a_joke_shown_just_before_redis_refuses_writes_is_not_shown_again_after(stack):
    """Shown, then Redis refuses writes (its disk filled up, say) before the bot could forget the request: the bot
    waits for Redis instead of failing the delivery, which the re-read after the outage would show a second time."""
    user = stack.new_user()
    # Every send is done at once and answered 5 s later: long enough to start refusing writes in between.
    stack.api.disrupt("sendMessage", "hang", for_s=120, hang_s=5)
    try:
        stack.api.private_message(user, "/joke Штирлиц и полный диск")
        wait_until(lambda: jokes_in(stack, user), 60, "the joke, its send still unanswered")
        with stack.redis() as client:
            client.config_set("min-replicas-to-write", 1)  # every write refused (NOREPLICAS), reads served
            try:
                time.sleep(8)  # the send's answer comes, the forget is refused, tried again
            finally:
                client.config_set("min-replicas-to-write", 0)
        stack.wait_for_worker()  # its heartbeat lapsed while refused: until it beats again, jokes are refused
        stack.api.private_message(user, "/joke Вовочка после аварии")  # read after the first one's re-read
        wait_until(lambda: len(jokes_in(stack, user)) >= 2, 60, "the joke asked after the outage")
        time.sleep(RETRY_GRACE_S)
    finally:
        stack.api.disrupt("sendMessage", "hang", for_s=0)  # over: the next tests' sends are answered at once
    texts = [m["text"] for m in jokes_in(stack, user)]
    assert sorted(t.split()[0] for t in texts) == ["Вовочка", "Штирлиц"], texts


def test_polling_tries_again_every_few_seconds_through_a_long_outage(stack):
    """The users' updates wait at Telegram while getUpdates fails: the bot must look again often, or they reach
    it seconds after Telegram is back (aiogram's own backoff grows to 5 s; 3.7 s apart by 12 s into an outage)."""
    outage_s = 12.0
    started = time.time()
    stack.api.disrupt("getUpdates", "5xx", for_s=outage_s)
    stack.api.sticker_message(stack.new_user())  # ends the long poll in flight (it began before the outage)
    wait_until(lambda: any(c.error for c in stack.api.calls("getUpdates") if c.time >= started), 10,
               "a getUpdates failing")
    user = stack.new_user()
    stack.api.private_message(user, "/joke Штирлиц и долгая тишина")
    assert is_joke(stack.wait_for_reply(user, timeout=60))
    polls = [c.time for c in stack.api.calls("getUpdates") if c.time >= started]
    failed = [c.time for c in stack.api.calls("getUpdates") if c.time >= started and c.error]
    assert len(failed) >= 5, polls
    first_good = next(t for t in polls if t > failed[-1])
    gaps = [b - a for a, b in zip(failed, [*failed[1:], first_good])]
    assert max(gaps) < 3.0, gaps
