"""Webhook mode: the bot registers its webhook with a secret and accepts only updates that carry it."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest

from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_TOKEN, bot_env, start_bot, stop_process, wait_until
from tests.fake_bot_api import FakeBotAPI

SECRET = "s3cret-Token_for-tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def webhook_bot(redis_server, tmp_path_factory):
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN)
    port = free_port()
    env = bot_env(api, redis_server.url, f"hook-{uuid.uuid4().hex[:6]}:", WEBHOOK_URL="https://bot.example.com/tg",
                  WEBHOOK_SECRET=SECRET, WEBHOOK_HOST="127.0.0.1", WEBHOOK_PORT=str(port), WEBHOOK_PATH="/tg")
    log = tmp_path_factory.mktemp("webhook") / "bot.log"
    bot = start_bot(env, log)
    try:
        wait_until(lambda: api.calls("setWebhook") or bot.poll() is not None, 60, "setWebhook")
        assert bot.poll() is None, log.read_text()[-3000:]
        yield api, f"http://127.0.0.1:{port}/tg", bot, log
    finally:
        stop_process(bot)
        api.stop()


def post_update(url: str, update: dict | bytes, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    deadline = time.monotonic() + 20
    while True:  # the HTTP server may come up a moment after setWebhook
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_update(update_id: int, user_id: int) -> dict:
    user = FakeBotAPI.make_user(user_id)
    chat = {"id": user_id, "type": "private", "first_name": user["first_name"]}
    return {"update_id": update_id, "message": {"message_id": 1, "date": int(time.time()), "chat": chat,
                                                "from": user, "text": "/start",
                                                "entities": [{"type": "bot_command", "offset": 0, "length": 6}]}}


def test_the_webhook_is_registered_with_its_url_and_secret(webhook_bot):
    api, _, _, _ = webhook_bot
    (call,) = api.calls("setWebhook")
    assert call.params["url"] == "https://bot.example.com/tg" and call.params["secret_token"] == SECRET
    assert "message" in call.params["allowed_updates"] and "inline_query" in call.params["allowed_updates"]


@pytest.mark.parametrize(("secret", "user_id"), [(None, 501), ("wrong-secret", 503)])
def test_updates_without_the_secret_are_rejected(webhook_bot, secret, user_id):
    api, url, _, _ = webhook_bot
    assert post_update(url, start_update(100 + user_id, user_id), secret) == 401
    # Then the same update with the secret, as a marker: once it is answered, the rejected one would have
    # been answered too (it came first), so exactly one answer means it was not handled.
    assert post_update(url, start_update(200 + user_id, user_id), SECRET) == 200
    wait_until(lambda: api.messages_in_chat(user_id), 30, "the answer to the marker /start")
    assert api.messages_in_chat(user_id) == [texts.START]


def test_a_secret_with_non_ascii_bytes_is_a_quiet_401(webhook_bot):
    """The comparison is of bytes: str comparison in constant time raises on non-ASCII (a 500 and a traceback)."""
    api, url, _, log = webhook_bot
    assert post_update(url, start_update(104, 504), SECRET + "é") == 401
    assert post_update(url, start_update(105, 504), "секрет".encode().decode("latin-1")) == 401  # UTF-8 bytes
    assert post_update(url, start_update(106, 504), SECRET) == 200
    wait_until(lambda: api.messages_in_chat(504), 30, "the answer to the marker /start")
    assert api.messages_in_chat(504) == [texts.START]
    assert "Traceback" not in log.read_text()


def test_an_oversized_body_is_refused_before_it_is_parsed(webhook_bot):
    api, url, _, log = webhook_bot
    update = start_update(107, 505)
    update["message"]["text"] = "/start " + "ж" * 200_000  # 400 KB: over the 256 KiB a webhook body may have
    assert post_update(url, json.dumps(update).encode(), SECRET) == 413
    assert post_update(url, b"{" * 300_000, SECRET) == 413  # not even valid JSON: never parsed
    assert post_update(url, start_update(108, 505), SECRET) == 200
    wait_until(lambda: api.messages_in_chat(505), 30, "the answer to the marker /start")
    assert api.messages_in_chat(505) == [texts.START]
    assert "Traceback" not in log.read_text()


def test_updates_with_the_secret_are_handled(webhook_bot):
    api, url, _, _ = webhook_bot
    assert post_update(url, start_update(101, 502), SECRET) == 200
    wait_until(lambda: api.messages_in_chat(502) == [texts.START], 10, "the answer to /start")


def test_the_webhook_server_stops_cleanly_on_sigterm(webhook_bot):
    _, _, bot, log = webhook_bot
    assert stop_process(bot) == 0
    text = log.read_text()
    assert "shutdown stage=webhook event=start" in text and "shutdown stage=webhook event=end outcome=ok" in text
    assert "shutdown stage=session event=end outcome=ok" in text
