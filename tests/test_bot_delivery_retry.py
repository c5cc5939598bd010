"""The delivery's retries of a send while Telegram has trouble: after a failed connection the send waits for a
getMe answered in time (it may have been delivered: re-sending into a hang would show it once per try), and goes
out as soon as one is; a 5xx (nothing done) is simply tried again after a pause."""
from __future__ import annotations

import pytest
from aiogram.exceptions import TelegramBadRequest, TelegramNetworkError, TelegramServerError

from bot.telegram import delivery
from bot.telegram.delivery import DeliveryLoop


class Telegram:
    """Scripted answers, in order, of sends and getMe probes; records what was called."""

    def __init__(self, sends: list, probes: list) -> None:
        self.sends, self.probes, self.calls = list(sends), list(probes), []

    def _answer(self, call: str, script: list):
        self.calls.append(call)
        outcome = script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def send(self):
        return self._answer("send", self.sends)

    async def get_me(self):
        return self._answer("getMe", self.probes)


def loop_with(telegram: Telegram, retry_s: float = 30.0) -> DeliveryLoop:
    outbox = type("Outbox", (), {"bot": telegram})()
    return DeliveryLoop(None, None, None, outbox, None, None, None, None, edit_interval_s=1.0, retry_s=retry_s)


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(delivery, "PROBE_PAUSE_S", 0.01)


def network() -> TelegramNetworkError:
    return TelegramNetworkError(None, "Request timeout error")


async def test_after_a_failed_connection_the_send_waits_for_telegram_to_answer_in_time_again():
    telegram = Telegram(sends=[network(), 42], probes=[network(), network(), "me"])
    assert await loop_with(telegram)._persist("r1", telegram.send) == 42
    # No second send while the probes fail: each would be one more copy if the first had arrived.
    assert telegram.calls == ["send", "getMe", "getMe", "getMe", "send"]


async def test_a_5xx_is_sent_again_after_a_pause_without_probing():
    server = TelegramServerError(method=None, message="Bad Gateway")
    telegram = Telegram(sends=[server, server, 7], probes=[])
    assert await loop_with(telegram)._persist("r1", telegram.send) == 7
    assert telegram.calls == ["send", "send", "send"]


async def test_an_error_that_will_not_pass_is_raised_at_once_and_the_retries_end():
    telegram = Telegram(sends=[TelegramBadRequest(None, "chat not found")], probes=[])
    with pytest.raises(TelegramBadRequest):
        await loop_with(telegram)._persist("r1", telegram.send)
    assert telegram.calls == ["send"]
    server = TelegramServerError(method=None, message="Bad Gateway")
    telegram = Telegram(sends=[server] * 1000, probes=[])
    with pytest.raises(TelegramServerError):
        await loop_with(telegram, retry_s=0.1)._persist("r1", telegram.send)
    assert 2 <= telegram.calls.count("send") < 1000


async def test_a_bot_that_lost_its_lease_cancels_its_deliveries_where_a_clean_stop_finishes_them():
    """The process that holds the Telegram lease now re-reads every result not acked here: one this process went on
    showing would be shown twice (bot/telegram/lease.py)."""
    import asyncio

    shown: list[str] = []

    async def show(request_id: str) -> None:
        await asyncio.sleep(0.3)  # a send on its way
        shown.append(request_id)

    stopping = loop_with(Telegram([], []))
    stopping._chain("r1", show("r1"))
    await asyncio.wait_for(stopping.close(), 5)
    assert shown == ["r1"]

    lost = loop_with(Telegram([], []))
    lost._chain("r2", show("r2"))
    await asyncio.wait_for(lost.abandon(), 0.2)
    await asyncio.sleep(0.5)
    assert shown == ["r1"] and not lost._tasks
