"""The bot's observability end to end: its /metrics and /healthz over HTTP, and JSON logs in which a
request_id follows a joke from the update to the reply, through the worker.

A stack of its own (real bot and worker processes, LOG_FORMAT=json, a fake Bot API), so these
tests depend on no other module's order.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.common.settings import Settings
from bot.telegram.keyboards import joke_id_of
from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, Stack, is_joke, make_stack, wait_until
from tests.fake_bot_api import FakeBotAPI

# Requests name no size: they are served (and counted) by the default one.
DEFAULT_SIZE = Settings.model_fields["default_size"].default


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    from tests.model_helpers import make_tiny_model_dir  # torch: only where a worker is needed

    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    model = tmp_path_factory.mktemp("models") / "nano"
    stack = make_stack(api, redis_server.url, f"obs-{uuid.uuid4().hex[:6]}:", tmp_path_factory.mktemp("logs"),
                       model, model, LOG_FORMAT="json")
    try:
        stack.start_bot()  # first: its imports take longest, and the model is built meanwhile
        make_tiny_model_dir(model, seed=1)
        yield stack.start()
    finally:
        stack.close()
        api.stop()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(stack: Stack, name: str, **labels: str) -> float:
    """The value of one sample on the bot's /metrics page (0 when the series does not exist yet)."""
    status, body = http_get(f"{stack.bot_metrics_url}/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


def ask_for_a_joke(stack: Stack, prompt: str) -> tuple[dict[str, Any], int]:
    """(the finished joke message, the update_id that asked for it) in a new user's private chat."""
    user = stack.new_user()
    update = stack.api.private_message(user, f"/joke {prompt}")
    joke = stack.wait_for_reply(user, timeout=30)
    assert is_joke(joke), joke
    return joke, update["update_id"]


def request_id_of(joke: dict[str, Any]) -> str:
    """The joke's buttons carry the request_id that produced it."""
    return joke_id_of(joke["reply_markup"]["inline_keyboard"][0][0]["callback_data"])


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line from before logging was configured
    return lines


# -- /metrics and /healthz ---------------------------------------------------------------------------


def test_a_joke_counts_as_accepted_and_delivered_and_its_latency_is_observed(stack):
    accepted = {"kind": "command", "size": "active", "outcome": "accepted"}
    delivered = {"kind": "command", "size": DEFAULT_SIZE, "outcome": "ok"}
    latency = {"kind": "command", "size": DEFAULT_SIZE}
    before = (sample(stack, "rujokes_requests_total", **accepted), sample(stack, "rujokes_requests_total", **delivered))

    ask_for_a_joke(stack, "Штирлиц пришел домой")

    # The count follows the message: wait for it rather than race it.
    wait_until(lambda: sample(stack, "rujokes_requests_total", **delivered) == before[1] + 1, 10,
               "the delivered request to be counted")
    assert sample(stack, "rujokes_requests_total", **accepted) == before[0] + 1
    assert sample(stack, "rujokes_reply_latency_seconds_count", **latency) >= 1
    assert sample(stack, "rujokes_reply_latency_seconds_sum", **latency) > 0


def test_healthz_is_200_while_redis_answers_and_the_delivery_loop_turns(stack):
    status, body = http_get(f"{stack.bot_metrics_url}/healthz")
    report = json.loads(body)
    assert status == 200 and report["healthy"] is True
    assert report["redis_ok_age_s"] < 5 and report["delivery_loop_age_s"] < 5


def test_telegram_flood_control_is_counted_by_method(stack):
    labels = {"method": "sendMessage"}
    before = sample(stack, "rujokes_telegram_retry_afters_total", **labels)
    stack.api.fail_next("sendMessage", error_code=429, retry_after=1)

    ask_for_a_joke(stack, "Приходит мужик в магазин")

    assert sample(stack, "rujokes_telegram_retry_afters_total", **labels) == before + 1
    assert sample(stack, "rujokes_telegram_errors_total", method="sendMessage", code="429") >= 1


def test_a_vote_is_counted_by_size(stack):
    joke, _ = ask_for_a_joke(stack, "Сидят два программиста")
    before = sample(stack, "rujokes_votes_total", size=DEFAULT_SIZE, vote="up")

    press = stack.api.press_button(joke["chat"]["id"], joke, texts.BUTTON_UP)  # the asker: a private chat
    assert stack.callback_answer(press["callback_query"]["id"])["text"] == texts.VOTE_NEW.format(vote="👍")

    assert sample(stack, "rujokes_votes_total", size=DEFAULT_SIZE, vote="up") == before + 1


# -- logs ------------------------------------------------------------------------------------------


def test_json_logs_follow_a_request_id_from_the_update_through_the_worker_to_the_reply(stack):
    joke, update_id = ask_for_a_joke(stack, "Вовочка приходит в школу")
    request_id = request_id_of(joke)

    def lines_about(path: Path) -> list[dict[str, Any]]:
        return [line for line in json_lines(path) if line.get("request_id") == request_id]

    delivered = wait_until(lambda: [line for line in lines_about(stack.bot_log)
                                    if line["msg"].startswith("delivered")], 10, "the bot's delivery line")
    [accepted] = [line for line in lines_about(stack.bot_log) if line["msg"].startswith("accepted")]
    assert (accepted["update_id"], accepted["chat_id"], accepted["kind"]) == (update_id, joke["chat"]["id"], "command")
    assert accepted["user_id"] == joke["chat"]["id"]  # a private chat's id is its user's
    [delivered] = delivered
    assert (delivered["status"], delivered["outcome"]) == ("ok", "ok") and delivered["latency_s"] > 0
    [answered] = [line for line in lines_about(stack.worker_log) if line.get("status") == "ok"]
    assert answered["worker_id"] == "e2e-worker"
