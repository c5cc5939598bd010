"""The security pass's parts, in process: signed button data, key names from hostile strings, redacted logs.
The end-to-end half (the real bot refusing forged presses, the token absent from logs) is test_bot_security.py."""
from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.common.logs import REDACTED, JsonFormatter, RedactingFormatter
from bot.common.settings import Settings
from bot.queue.protocol import key_part
from bot.telegram.feedback import FeedbackStore
from bot.telegram.keyboards import JokeAction, WriteInline, joke_id_of, joke_keyboard, write_keyboard
from bot.telegram.outstanding import OutstandingRequests
from bot.telegram.signing import INLINE_SCOPE, Signer, chat_scope
from bot.telegram.texts import RU

TOKEN = "123456789:AAFakeTokenForUnitTests_abcdefghijklmn"
JOKE_ID = "0123456789abcdef0123456789abcdef"


def signer(token: str = TOKEN, secret: str = "") -> Signer:
    return Signer.from_settings(Settings(bot_token=SecretStr(token), callback_secret=SecretStr(secret)))


# -- signed button data ------------------------------------------------------------------------------------

def test_signed_data_verifies_only_in_its_own_scope():
    data = signer().sign(JokeAction(action="more", joke_id=JOKE_ID).pack(), chat_scope(42))
    assert signer().verified(data, chat_scope(42)) == f"j:more:{JOKE_ID}"
    assert signer().verified(data, chat_scope(43)) is None  # copied to another chat
    assert signer().verified(data, INLINE_SCOPE) is None
    assert signer().verified(data, None) is None


def test_a_changed_action_id_or_key_fails_the_check():
    data = signer().sign(f"j:up:{JOKE_ID}", chat_scope(42))
    body, _, mac = data.rpartition(":")
    assert signer().verified(f"j:down:{JOKE_ID}:{mac}", chat_scope(42)) is None
    assert signer().verified(f"j:up:{'f' * 32}:{mac}", chat_scope(42)) is None
    assert signer(token="987654321:AAAnotherTokenEntirely_abcdefghijklmno").verified(data, chat_scope(42)) is None
    assert signer(secret="a-configured-secret").verified(data, chat_scope(42)) is None
    assert signer(secret="a-configured-secret").verified(
        signer(secret="a-configured-secret").sign(body, chat_scope(42)), chat_scope(42)) == body


def test_old_unsigned_buttons_do_not_verify():
    assert signer().verified(f"j:more:{JOKE_ID}", chat_scope(42)) is None
    assert signer().verified("w:0123456789abcdef", INLINE_SCOPE) is None


@given(st.text(max_size=80), st.integers())
def test_any_string_a_client_sends_is_refused_and_never_raises(data, chat_id):
    assert signer().verified(data, chat_scope(chat_id)) is None


def test_every_button_fits_telegrams_64_bytes():
    s = signer()
    for scope in (chat_scope(-1_000_000_000_001), INLINE_SCOPE):
        for row in joke_keyboard(JOKE_ID, s, scope, RU).inline_keyboard:
            for button in row:
                assert len(button.callback_data.encode()) <= 64
                assert joke_id_of(button.callback_data) == JOKE_ID
    (button,) = write_keyboard("0123456789abcdef", s, RU).inline_keyboard[0]
    assert len(button.callback_data.encode()) <= 64


def test_button_fields_must_be_ids_the_bot_makes():
    with pytest.raises(ValueError):
        JokeAction.unpack("j:more:*")
    with pytest.raises(ValueError):
        WriteInline.unpack("w:../../x")


# -- Redis key names ------------------------------------------------------------------------------------

HOSTILE_KEY_PARTS = ["", "*", "a:b", "x\r\nFLUSHALL\r\n", "{tag}", "ж" * 40, "a" * 65, "../..", "\ud800", "🙂"]


@pytest.mark.parametrize("value", HOSTILE_KEY_PARTS)
def test_key_part_keeps_hostile_strings_to_one_plain_bounded_segment(value):
    part = key_part(value)
    assert part.startswith("~") and len(part) == 33 and part[1:].isalnum() and part.isascii()


def test_key_part_leaves_the_ids_the_bot_makes_alone_and_never_collides_with_them():
    assert key_part(JOKE_ID) == JOKE_ID and key_part("AgAAAInline-42_x") == "AgAAAInline-42_x"
    assert len({key_part(value) for value in HOSTILE_KEY_PARTS}) == len(HOSTILE_KEY_PARTS)


async def test_hostile_ids_stay_inside_their_own_keys(redis_client, key_prefix):
    outstanding, feedback = OutstandingRequests(redis_client, key_prefix), FeedbackStore(redis_client, key_prefix)
    for value in HOSTILE_KEY_PARTS:
        assert await outstanding.claim_inline_message(value)
        assert await outstanding.inline_prompt(value) is None
        assert await feedback.joke(value) is None and await feedback.vote(value, 1, 1) == "unknown"
    keys = [key async for key in redis_client.scan_iter(f"{key_prefix}*")]
    assert len(keys) == len(HOSTILE_KEY_PARTS)
    assert all(key.startswith(f"{key_prefix}bot:inline_started:~") and key.isascii() and " " not in key
               and "\n" not in key and "*" not in key.removeprefix(key_prefix) for key in keys)


# -- logs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", [logging.Formatter("%(levelname)s %(name)s: %(message)s"), JsonFormatter()])
def test_logs_redact_the_token_in_messages_arguments_and_tracebacks(inner):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(inner, Settings(bot_token=SecretStr(TOKEN)).secret_values()))
    logger = logging.getLogger("aiohttp.client.test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("GET https://api.telegram.org/bot%s/getMe", TOKEN)
        logger.warning(f"half of it: {TOKEN.partition(':')[2]}")
        try:
            raise RuntimeError(f"connection reset: https://api.telegram.org/bot{TOKEN}/sendMessage")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert TOKEN not in text and TOKEN.partition(":")[2] not in text and text.count(REDACTED) == 3
    if isinstance(inner, JsonFormatter):
        assert all(json.loads(line) for line in text.splitlines())


def test_the_secrets_to_redact_are_every_secret_setting():
    settings = Settings(bot_token=SecretStr(TOKEN), callback_secret=SecretStr("callback-secret-value"),
                        webhook_secret="webhook-secret-value", redis_url="redis://:redis-password@redis:6379/0")
    assert set(settings.secret_values()) == {TOKEN, TOKEN.partition(":")[2], "callback-secret-value",
                                              "webhook-secret-value", "redis-password"}
    assert Settings(bot_token=SecretStr("")).secret_values() == []
