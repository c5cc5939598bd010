"""The bot killed with SIGKILL while it works on requests, then restarted (issue #20). Telegram re-delivers
every update whose getUpdates confirmation never arrived: each must still be answered exactly once.

A stack of its own (the bot is killed, and requests must outlive a restart of a loaded machine: a long
request timeout), on the session's Redis.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterator

import pytest

from bot.telegram.texts import RU as texts
from tests.e2e_stack import (
    BOT_TOKEN,
    BOT_USERNAME,
    MENUS_PER_START,
    Stack,
    calls_to,
    free_port,
    is_joke,
    make_stack,
    start_bot,
    stop_process,
    wait_until,
)
from tests.fake_bot_api import FakeBotAPI


@pytest.fixture(scope="module")
def restart_stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    from tests.model_helpers import make_tiny_model_dir  # torch: only where a worker is needed

    nano = tmp_path_factory.mktemp("restart-models") / "nano"
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    stack = make_stack(api, redis_server.url, f"restart-{uuid.uuid4().hex[:6]}:", tmp_path_factory.mktemp("logs"),
                       nano, nano, REQUEST_TIMEOUT_S="300")
    try:
        stack.start_bot()
        make_tiny_model_dir(nano, seed=1)
        yield stack.start()
    finally:
        stack.close()
        api.stop()


def healthz(port: int) -> tuple[int, str | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read()).get("role")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()).get("role")


def passed_over(stack: Stack) -> set[int]:
    """The ids of the updates the bot's log says it passed over as handled before."""
    return {int(n) for n in re.findall(r"duplicate update update_id=(\d+)", stack.bot_log.read_text())}


def kill_bot(stack: Stack) -> None:
    os.kill(stack.bot.pid, signal.SIGKILL)
    stack.bot.wait(timeout=30)


def test_a_bot_killed_before_confirming_its_updates_answers_each_exactly_once(restart_stack):
    stack = restart_stack
    users = [stack.new_user() for _ in range(8)]
    group = stack.new_group()  # a placeholder message: a re-delivery must not send a second one
    queue = f"{stack.prefix}requests:normal"
    stack.pause_worker()  # every request stays in flight until the restarted bot has seen its update again
    try:
        stack.api.stall_polls()  # the bot's confirming getUpdates never reaches "Telegram"
        with stack.api.together():  # one getUpdates answer brings them all
            sent = [stack.api.private_message(user, f"/joke Штирлиц {n}") for n, user in enumerate(users)]
            sent.append(stack.api.group_message(group, stack.new_user(), "/joke Вовочка"))
        ids = {update["update_id"] for update in sent}
        with stack.redis() as client:
            wait_until(lambda: client.xlen(queue) == len(sent), 60, "every request accepted")
            wait_until(lambda: [p for p in stack.api.stalled_polls if p.get("offset", 0) > max(ids)], 60,
                       "the getUpdates that would confirm them")
            kill_bot(stack)
            assert ids <= {update["update_id"] for update in stack.api.pending_updates}  # unconfirmed
            stack.api.resume_polls()
            stack.start_bot()
            wait_until(lambda: not ids & {u["update_id"] for u in stack.api.pending_updates}, 120,
                       f"the restarted bot to take the updates again; log:\n{stack.log_tail(stack.bot_log)}")
            # Each at least once: one the killed bot handled but had not yet removed from its inbox is also
            # replayed, and passed over a second time.
            wait_until(lambda: ids <= passed_over(stack), 60, "each re-delivered update passed over")
            assert client.xlen(queue) == len(sent)  # nothing submitted twice
    finally:
        stack.resume_worker()
    chats = [*users, group]
    for chat in chats:
        stack.wait_for_reply(chat, timeout=120)
    with stack.redis() as client:  # every request answered and shown: nothing else can arrive
        wait_until(lambda: client.zcard(f"{stack.prefix}bot:outstanding:due") == 0 and client.xlen(queue) == 0, 60,
                   "every answer delivered")
    for chat in chats:
        messages = stack.bot_messages(chat)
        assert len(messages) == 1 and is_joke(messages[0]), (chat, messages)
        assert messages[0]["text"].startswith("Вовочка" if chat == group else "Штирлиц")
    assert [c.params["text"] for c in calls_to(stack, "sendMessage", group)] == [texts.PLACEHOLDER]
    for user in users:  # one "Thinking…" draft each, and the joke sent once
        assert [d["text"] for d in stack.api.drafts[user]].count("") == 1
        assert len([c for c in calls_to(stack, "sendMessage", user) if c.error is None]) == 1


def test_a_bot_killed_with_a_daily_post_in_flight_posts_it_once_after_its_restart(restart_stack):
    """The post is claimed and submitted, the bot dies before the joke comes back; the restarted bot shows it once."""
    stack, user = restart_stack, restart_stack.new_user()
    stack.api.private_message(user, "/daily 09:00")
    stack.wait_for_reply(user)
    queue, header = f"{stack.prefix}requests:normal", texts.DAILY_HEADER
    stack.pause_worker()
    try:
        with stack.redis() as client:
            before = client.xlen(queue)
            assert client.zadd(f"{stack.prefix}bot:daily:due", {str(user): int(time.time()) - 1}, xx=True, ch=True)
            wait_until(lambda: client.xlen(queue) == before + 1, 30, "the daily post submitted")
            kill_bot(stack)
            menus = len(stack.api.calls("setMyCommands"))
            stack.start_bot()
            wait_until(lambda: len(stack.api.calls("setMyCommands")) >= menus + 4, 60, "the restarted bot")
            time.sleep(1.5)  # rounds of the restarted scheduler: the post is pending, not due again
            assert client.xlen(queue) == before + 1
    finally:
        stack.resume_worker()
    wait_until(lambda: [m for m in stack.bot_messages(user) if m["text"].startswith(header)], 60, "the daily post")
    with stack.redis() as client:
        wait_until(lambda: client.zcard(f"{stack.prefix}bot:daily:pending") == 0, 30, "the post marked done")
    time.sleep(1.5)
    posts = [m for m in stack.bot_messages(user) if m["text"].startswith(header)]
    assert len(posts) == 1 and is_joke(posts[0]), posts


def test_a_bot_killed_with_an_update_in_hand_that_telegram_counts_as_delivered_answers_it_after_restart(restart_stack):
    """aiogram confirms an update with its next poll while the handler still runs: killed then, the update is gone
    from Telegram, and only the bot's inbox in Redis remembers it."""
    stack, group = restart_stack, restart_stack.new_group()
    stack.api.disrupt("sendMessage", "hang", for_s=4, hang_s=6)  # the placeholder's send: the handler is in hand
    update = stack.api.group_message(group, stack.new_user(), "/joke Штирлиц в руках")
    # The placeholder exists as soon as "Telegram" did the call; its answer (and the call's log) comes 6 s later.
    wait_until(lambda: [m for m in stack.bot_messages(group) if m.get("text") == texts.PLACEHOLDER], 30,
               "the handler in hand, waiting for its placeholder's answer")
    # aiogram's next poll, sent as soon as the update was handed to its handler, has confirmed it already
    wait_until(lambda: update["update_id"] not in {u["update_id"] for u in stack.api.pending_updates}, 10,
               "the poll that confirms the update to Telegram")
    kill_bot(stack)
    menus = len(stack.api.calls("setMyCommands"))
    stack.start_bot()
    wait_until(lambda: len(stack.api.calls("setMyCommands")) >= menus + 4, 60, "the restarted bot")
    joke = wait_until(lambda: [m for m in stack.bot_messages(group) if is_joke(m)], 90,
                      "the replayed update's joke")
    time.sleep(2)
    assert len([m for m in stack.bot_messages(group) if is_joke(m)]) == 1, stack.bot_messages(group)
    assert joke[0]["text"].startswith("Штирлиц в руках")


def test_a_hot_standby_takes_over_from_a_killed_bot_and_from_a_stopped_one(restart_stack):
    """Two bot processes on one token (bot/telegram/lease.py): one serves, the other waits with aiogram imported.
    Killed mid-stream, the active one's requests are answered once by the standby, which did not have to start;
    stopped cleanly, it hands over at the end of its shutdown, and a /joke sent then is answered too."""
    stack = restart_stack
    standby_log = stack.log_dir / "standby.log"
    port = free_port()  # as compose runs it: a container, a port of its own
    standby = start_bot({**stack.bot_env, "BOT_METRICS_PORT": str(port)}, standby_log)
    try:
        wait_until(lambda: "standby:" in standby_log.read_text(), 60, f"the standby; log:\n{standby_log.read_text()}")
        assert healthz(port) == (200, "standby")  # ready to take over: compose's healthcheck passes
        menus = len(stack.api.calls("setMyCommands"))
        users = [stack.new_user() for _ in range(4)]
        stack.pause_worker()
        try:
            stack.api.stall_polls()  # killed before confirming: Telegram gives the updates to the standby again
            with stack.api.together():
                sent = [stack.api.private_message(user, f"/joke Штирлиц {n}") for n, user in enumerate(users)]
            with stack.redis() as client:
                wait_until(lambda: client.xlen(f"{stack.prefix}requests:normal") == len(sent), 60, "accepted")
            kill_bot(stack)
            stack.api.resume_polls()
            wait_until(lambda: "took the Telegram lease" in standby_log.read_text(), 30, "the standby's takeover")
            assert "whose lease lapsed" in standby_log.read_text()
            wait_until(lambda: len(stack.api.calls("setMyCommands")) >= menus + MENUS_PER_START, 30, "it serves")
            wait_until(lambda: healthz(port) == (200, "active"), 15, "the new active bot's /healthz")  # its own port
        finally:
            stack.resume_worker()
        for user in users:
            stack.wait_for_reply(user, timeout=120)
        time.sleep(1.5)
        for user in users:
            assert [is_joke(m) for m in stack.bot_messages(user)] == [True], stack.bot_messages(user)

        stack.start_bot()  # the killed one, started again as its supervisor would: now the standby
        wait_until(lambda: stack.bot_log.read_text().count("standby:") >= 1, 60, "the new standby")
        assert stop_process(standby) == 0, standby_log.read_text()[-4000:]
        wait_until(lambda: "took the Telegram lease" in stack.bot_log.read_text(), 30, "the handover")
        takeover = stack.bot_log.read_text().split("took the Telegram lease")[-1].splitlines()[0]
        assert "handed over by" in takeover and f":{standby.pid}:" in takeover, takeover  # no lapse waited out
        user = stack.new_user()
        stack.api.private_message(user, "/joke Вовочка")
        assert is_joke(stack.wait_for_reply(user, timeout=60))
    finally:
        stop_process(standby)
