"""One journey with the weights that ship: the real `rujokes-worker` serving the bundled model of the
default size (what `Settings` defaults to, so the test follows a change of default), behind the real
`rujokes-bot`, a real Redis and the fake Telegram Bot API.

Every other end-to-end stack runs a tiny random model, which writes random bytes; here a broken
checkpoint, tokenizer, decoding fast path or UTF-8-safe streaming shows as a reply that is not Russian text.
"""
from __future__ import annotations

import re
import uuid

import pytest

from bot.common.settings import Settings
from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, Stack, is_joke, make_stack
from tests.fake_bot_api import FakeBotAPI

DEFAULT_SIZE = Settings.model_fields["default_size"].default
CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
LETTER = re.compile(r"[^\W\d_]")


@pytest.fixture(scope="module")
def bundled_stack(redis_server, tmp_path_factory) -> Stack:
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    stack = make_stack(api, redis_server.url, f"bundled-{uuid.uuid4().hex[:6]}:", tmp_path_factory.mktemp("bundled"),
                       "none", "none", MAX_NEW_TOKENS="40",
                       # The default deadline too: with an empty compile cache the first jokes are written while
                       # the step compiles beside them, seconds slower each (BENCHMARKS.md, "rujokes run" with a
                       # standby bot), past the tiny stacks' 8 s.
                       REQUEST_TIMEOUT_S=str(Settings.model_fields["request_timeout_s"].default))
    # Only the default size, from the package's own weights (MODEL_*=bundled, as after a plain install).
    stack.worker_env.update(MODEL_NANO="none", MODEL_MINI="none", MODEL_SMALL="none", WORKER_ID="bundled-worker")
    stack.worker_env[f"MODEL_{DEFAULT_SIZE.upper()}"] = "bundled"
    # Served as after a plain install: every speed-up at its default (the tiny stacks turn the compile off).
    for name in ("COMPILE_DECODE", "CPU_INT8_SIZES", "CPU_BF16_SIZES", "TORCH_THREADS"):
        stack.worker_env.pop(name, None)
    try:
        yield stack.start()
    finally:
        stack.close()
        api.stop()


def russian_continuation(text: str, prompt: str) -> str:
    """What the model added to `prompt`, checked to be Russian text; returned for the caller's totals."""
    assert text.startswith(prompt), text
    assert "\ufffd" not in text, f"broken UTF-8 in {text!r}"
    continuation = text[len(prompt):]
    assert continuation.strip(), f"nothing added to {prompt!r}"
    letters = LETTER.findall(text)
    assert len(CYRILLIC.findall(text)) >= 0.9 * len(letters), f"not Russian: {text!r}"
    return continuation


def test_the_worker_serves_the_bundled_default_size(bundled_stack):
    reply = bundled_stack.admin_reply("/model")
    assert f"Активная модель: {DEFAULT_SIZE}" in reply and f"Доступны у воркеров: {DEFAULT_SIZE}" in reply
    assert f"loaded {DEFAULT_SIZE} from bundled" in bundled_stack.worker_log.read_text(errors="replace")


def test_bundled_model_answers_private_group_and_inline_requests_in_russian(bundled_stack):
    stack, added = bundled_stack, []
    # private chats: drafts stream in, then the joke
    for prompt in ("Штирлиц пришел домой и", "Приходит мужик к врачу и говорит"):
        user = stack.new_user()
        stack.api.private_message(user, f"/joke {prompt}")
        joke = stack.wait_for_reply(user, timeout=120)
        assert is_joke(joke), joke["text"]
        added.append(russian_continuation(joke["text"], prompt))
        streamed = [d["text"] for d in stack.api.drafts[user][1:]]  # [0] is the empty "Thinking…" draft
        assert streamed and not [text for text in streamed if "\ufffd" in text]  # UTF-8-safe pieces
        assert all(text.startswith(prompt) for text in streamed)
    # a group: a placeholder edited into the joke
    group, prompt = stack.new_group(), "Вовочка приходит в школу и"
    stack.api.group_message(group, stack.new_user(), f"/joke@{BOT_USERNAME} {prompt}")
    joke = stack.wait_for_reply(group, timeout=120)
    assert is_joke(joke), joke["text"]
    added.append(russian_continuation(joke["text"], prompt))
    # inline mode: the variants finished within INLINE_WAIT_S
    prompt = "Встречаются как-то русский, немец и"
    query_id = stack.api.inline_query(stack.new_user(), prompt)["inline_query"]["id"]
    for result in stack.inline_answer(query_id, timeout=60)["results"]:
        text = result["input_message_content"]["message_text"]
        if text != texts.PLACEHOLDER:  # the ✍️ article when none was ready in time: no text to read then
            added.append(russian_continuation(text, prompt))
    # Short jokes may end early, but together they are real text, not a few stray letters.
    assert len(CYRILLIC.findall("".join(added))) >= 40, added
