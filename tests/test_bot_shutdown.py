"""The bot's shutdown is bounded and says what it does: stages with timeouts (bot/common/shutdown.py), and
the real `rujokes-bot` process stopping on SIGTERM, in stages, without acking what it did not deliver."""
from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
import uuid

import pytest
import redis

from bot.common.shutdown import Stage, run_bounded, run_stages
from bot.queue.protocol import DATA_FIELD, RESULT_GROUP, Delivery, JokeResult, StreamKeys
from bot.telegram.middlewares import InFlightUpdates
from tests.e2e_stack import BOT_TOKEN, bot_env, free_port, start_bot, wait_until
from tests.fake_bot_api import FakeBotAPI

BOT_STAGES = ["polling", "inbox", "updates", "daily", "broadcasts", "results_reader", "delivery", "metrics", "lease", "redis",
              "session"]


def warnings_about(caplog: pytest.LogCaptureFixture, stage: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and getattr(r, "fields", {}).get("shutdown_stage") == stage]


# -- stages ---------------------------------------------------------------------------------------------


async def test_a_stage_that_never_ends_is_cancelled_and_the_next_stages_still_run(caplog):
    caplog.set_level(logging.INFO, logger="bot.common.shutdown")
    ran: list[str] = []

    async def quick() -> None:
        ran.append("quick")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def after() -> None:
        ran.append("after")

    total_s = 2.0
    started, started_wall = time.monotonic(), time.time()
    reports = await run_stages([Stage("quick", quick, 0.25), Stage("hangs", forever, 0.5), Stage("after", after, 0.25)],
                               total_s=total_s)
    elapsed = time.monotonic() - started
    assert [(r.name, r.outcome) for r in reports] == [("quick", "ok"), ("hangs", "timeout"), ("after", "ok")]
    assert ran == ["quick", "after"]
    # Its share (0.5 of the 0.75 left) of what "quick" left of the budget, and it runs for 80% of that:
    # read from the stage's own log line, so a slow machine (a late "quick") cannot make it look wrong.
    (record,) = [r for r in caplog.records if getattr(r, "fields", {}).get("shutdown_stage") == "hangs"
                 and r.fields["event"] == "start"]
    share, start = 0.8 * 0.5 / 0.75, record.fields
    # At most what was left when its start was logged (on a loaded machine that can be well after "quick").
    left_at_start = total_s - (record.created - started_wall)
    assert share * left_at_start - 0.001 <= start["timeout_s"] <= share * total_s + 0.001  # logged to 3 decimals
    assert reports[1].duration_s >= start["timeout_s"] - 0.01  # it ran until then: cancelled, not waited for
    # The whole budget holds (a stage that were waited for would never end). Timers fire late on a loaded
    # machine, never early: 1 s of margin for that; the share itself is checked on the log line above.
    assert elapsed < total_s + 1.0, elapsed
    assert any("cancelling it" in message for message in warnings_about(caplog, "hangs"))
    assert warnings_about(caplog, "quick") == warnings_about(caplog, "after") == []


async def test_time_a_quick_stage_leaves_passes_on_to_the_later_ones():
    async def quick() -> None:
        pass

    async def slowish() -> None:
        await asyncio.sleep(0.5)

    # An even split would cut "slowish" at 0.8 * 0.5 s; with what "quick" left it has ~0.8 s.
    reports = await run_stages([Stage("quick", quick, 0.5), Stage("slowish", slowish, 0.5)], total_s=1.0)
    assert [r.outcome for r in reports] == ["ok", "ok"]


async def test_a_stage_that_ignores_cancellation_is_left_behind_within_its_share(caplog):
    caplog.set_level(logging.INFO, logger="bot.common.shutdown")
    stubborn: list[asyncio.Task] = []

    async def ignores_cancellation() -> None:
        stubborn.append(asyncio.current_task())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)  # "cleanup" that takes far too long

    started = time.monotonic()
    (report,) = await run_stages([Stage("stubborn", ignores_cancellation, 1.0)], total_s=1.0)
    elapsed = time.monotonic() - started
    try:
        assert report.outcome == "abandoned"
        # Its whole share (1 s) and not the 30 s its cleanup wants: 2 s of margin for a loaded machine's late
        # timers still tells the two apart by far.
        assert 1.0 - 0.01 <= elapsed < 1.0 + 2.0, elapsed
        messages = warnings_about(caplog, "stubborn")
        assert any("cancelling it" in m for m in messages) and any("ignored cancellation" in m for m in messages)
    finally:
        stubborn[0].cancel()  # a second cancel ends the "cleanup"


async def test_every_stage_logs_its_start_and_its_end_with_duration_and_a_failure_does_not_stop_the_rest(caplog):
    caplog.set_level(logging.INFO, logger="bot.common.shutdown")

    async def fails() -> None:
        raise ConnectionError("Redis is gone")

    async def naps() -> None:
        await asyncio.sleep(0.05)

    reports = await run_stages([Stage("fails", fails, 0.5), Stage("naps", naps, 0.5)], total_s=2.0)
    assert [(r.name, r.outcome) for r in reports] == [("fails", "error"), ("naps", "ok")]
    events = [(r.fields["shutdown_stage"], r.fields["event"]) for r in caplog.records if hasattr(r, "fields")]
    assert events == [("fails", "start"), ("fails", "error"), ("fails", "end"), ("naps", "start"), ("naps", "end")]
    (naps_end,) = [r for r in caplog.records
                   if getattr(r, "fields", {}).get("shutdown_stage") == "naps" and r.fields["event"] == "end"]
    # The logged duration is the stage's measured one (at least its nap; how much more is the machine's business).
    assert naps_end.fields["outcome"] == "ok" and naps_end.fields["duration_s"] == round(reports[1].duration_s, 3)
    assert naps_end.fields["duration_s"] >= 0.05
    assert "duration_s=" in naps_end.getMessage() and "stage=naps" in naps_end.getMessage()
    assert "Redis is gone" in warnings_about(caplog, "fails")[0]


async def test_draining_updates_waits_for_handlers_and_cancels_them_when_time_is_up():
    in_flight = InFlightUpdates()
    release = asyncio.Event()
    handled: list[str] = []

    async def handler(event: str, data: dict) -> None:
        await release.wait()
        handled.append(event)

    quick = asyncio.create_task(in_flight(handler, "quick", {}))
    await asyncio.sleep(0)
    assert len(in_flight) == 1
    draining = asyncio.create_task(in_flight.drain())
    await asyncio.sleep(0.05)
    assert not draining.done()  # the handler is still at work
    release.set()
    await asyncio.wait_for(draining, 1)
    assert handled == ["quick"] and quick.done() and len(in_flight) == 0

    release.clear()
    slow = asyncio.create_task(in_flight(handler, "slow", {}))
    await asyncio.sleep(0)
    (report,) = await run_stages([Stage("updates", in_flight.drain, 1.0)], total_s=0.2)
    assert report.outcome == "timeout" and slow.cancelled() and handled == ["quick"]


_left_behind: list[asyncio.Task] = []  # referenced, so no "Task was destroyed" noise in later tests


def test_leftover_tasks_that_ignore_cancellation_do_not_hold_up_the_exit():
    async def main() -> None:
        async def stubborn() -> None:
            while True:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    pass
        _left_behind.append(asyncio.create_task(stubborn()))
        await asyncio.sleep(0)

    started = time.monotonic()
    run_bounded(main(), leftover_s=0.2)  # asyncio.run(main()) would never return
    assert time.monotonic() - started < 2


def test_the_watchdog_ends_a_process_whose_shutdown_hangs():
    code = "import time; from bot.common.shutdown import start_watchdog; start_watchdog(0.3); time.sleep(60)"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "did not end within 0.3s" in result.stderr
    assert time.monotonic() - started < 20


# -- the real bot process -----------------------------------------------------------------------------


def stage_lines(log: str, stage: str) -> dict[str, str]:
    """The stage's log lines by event (start, end, overrun, ...)."""
    found = re.findall(rf"shutdown stage={stage} event=(\w+)(.*)", log)
    return {event: rest for event, rest in found}


@pytest.fixture
def fake_api():
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN)
    yield api
    api.stop()


def start_and_wait_for_polling(api: FakeBotAPI, env: dict[str, str], log_path) -> subprocess.Popen:
    bot = start_bot(env, log_path)
    # setMyCommands comes right before the results reader starts and polling begins
    wait_until(lambda: api.calls("setMyCommands") or bot.poll() is not None, 60, "the bot to start")
    assert bot.poll() is None, log_path.read_text()[-3000:]
    wait_until(lambda: "Run polling" in log_path.read_text(), 20, "polling to start")
    return bot


def sigterm(bot: subprocess.Popen) -> tuple[int, float]:
    started = time.monotonic()
    bot.terminate()
    try:
        return bot.wait(timeout=30), time.monotonic() - started
    except subprocess.TimeoutExpired:
        bot.kill()
        bot.wait()
        raise AssertionError("the bot did not exit within 30 s of SIGTERM")


def stopped_in(log: str) -> float:
    """The shutdown's duration as the bot logs it ("bot stopped in 1.23s")."""
    match = re.search(r"bot stopped in ([\d.]+)s", log)
    assert match, log[-3000:]
    return float(match.group(1))


def test_sigterm_stops_the_bot_promptly_stage_by_stage(fake_api, redis_server, tmp_path):
    env = bot_env(fake_api, redis_server.url, f"stop-{uuid.uuid4().hex[:6]}:", BOT_SHUTDOWN_TIMEOUT_S="4",
                  BOT_METRICS_PORT=str(free_port()), METRICS_HOST="127.0.0.1")
    log_path = tmp_path / "bot.log"
    bot = start_and_wait_for_polling(fake_api, env, log_path)
    code, elapsed = sigterm(bot)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    # The shutdown itself, by the bot's own clock, keeps BOT_SHUTDOWN_TIMEOUT_S; the process's exit after it
    # (interpreter teardown) is only bounded loosely: on a loaded 2-core machine it took up to 7 s.
    assert stopped_in(log) < 4 + 0.5, log[-3000:]
    assert elapsed < 4 + 15, elapsed
    for stage in BOT_STAGES:
        lines = stage_lines(log, stage)
        assert set(lines) == {"start", "end"}, (stage, log[-3000:])
        assert "outcome=ok" in lines["end"] and re.search(r"duration_s=[\d.]+", lines["end"])
    starts = [log.index(f"shutdown stage={stage} event=start") for stage in BOT_STAGES]
    assert starts == sorted(starts), "stages run in order"
    assert "bot stopped in" in log and "Traceback" not in log


def test_a_delivery_that_hangs_is_cut_short_and_its_result_stays_unacked(fake_api, redis_server, tmp_path):
    """Telegram makes the bot wait 30 s (429) to show a finished joke: SIGTERM still ends the bot within
    BOT_SHUTDOWN_TIMEOUT_S, and the joke stays pending in the results stream for the next start."""
    prefix = f"hang-{uuid.uuid4().hex[:6]}:"
    keys = StreamKeys(prefix)
    result = JokeResult(request_id=uuid.uuid4().hex, delivery=Delivery(chat_id=4242), status="ok",
                        text="Штирлиц шёл по лесу.", size="nano", worker_id="w1")
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        entry_id = client.xadd(keys.results, {DATA_FIELD: result.model_dump_json()})
    fake_api.fail_next("sendMessage", 429, retry_after=30)
    env = bot_env(fake_api, redis_server.url, prefix, BOT_SHUTDOWN_TIMEOUT_S="3")
    log_path = tmp_path / "bot.log"
    bot = start_and_wait_for_polling(fake_api, env, log_path)
    wait_until(lambda: fake_api.calls("sendMessage"), 20, "the delivery to meet flood control")
    code, elapsed = sigterm(bot)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert stopped_in(log) < 3 + 0.5, log[-3000:]
    assert elapsed < 3 + 15, elapsed
    delivery = stage_lines(log, "delivery")
    assert {"start", "overrun", "end"} <= set(delivery) and "outcome=timeout" in delivery["end"], log[-3000:]
    for stage in set(BOT_STAGES) - {"delivery", "metrics"}:
        assert "outcome=ok" in stage_lines(log, stage)["end"], (stage, log[-3000:])
    assert [c for c in fake_api.calls("sendMessage") if c.error is None] == []  # never shown...
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        pending = client.xpending_range(keys.results, RESULT_GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [entry_id]  # ...so not acked: the next start delivers it
