"""`rujokes run` (the README's Quick start): embedded Redis + worker + bot from `.env`, one command."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_TOKEN, wait_until
from tests.fake_bot_api import FakeBotAPI
from tests.model_helpers import make_tiny_model_dir


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def api():
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN)
    yield api
    api.stop()


def lease_holder_pid(redis_url: str) -> int | None:
    import redis

    from bot.queue.protocol import DEFAULT_PREFIX

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        holder = client.get(f"{DEFAULT_PREFIX}bot:lease") or ""
    finally:
        client.close()
    parts = holder.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def test_rujokes_run_serves_jokes_from_dotenv_keeps_a_standby_bot_and_stops_everything_on_sigint(api, tmp_path):
    make_tiny_model_dir(tmp_path / "nano")
    (tmp_path / ".env").write_text("\n".join([
        f"BOT_TOKEN={BOT_TOKEN}", f"TELEGRAM_API_BASE={api.base_url}", "REDIS_URL=",
        f"REDIS_DATA_DIR={tmp_path / 'redis'}", f"MODEL_NANO={tmp_path / 'nano'}", "MODEL_MINI=none",
        "MODEL_SMALL=none", "DEVICE=cpu", "MAX_NEW_TOKENS=16", "SHUTDOWN_GRACE_S=5",
    ]) + "\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BOT_", "REDIS_", "MODEL_", "TELEGRAM_", "WEBHOOK_", "WORKER_", "STANDBY_"))}
    env["OMP_NUM_THREADS"] = "1"
    rujokes = shutil.which("rujokes", path=str(Path(sys.executable).parent)) or "rujokes"
    log = tmp_path / "run.log"

    def started_pids() -> dict[int, str]:
        return {int(pid): name for name, pid in re.findall(r"started ([\w-]+) \(pid (\d+)\)", log.read_text())}

    def jokes_in(chat_id: int) -> list[str]:
        return [t for t in api.messages_in_chat(chat_id) if t.startswith("Штирлиц пришел домой")]

    with open(log, "wb") as output:
        launcher = subprocess.Popen([rujokes, "run"], cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        # Sent at once, while the models load: it waits at "Telegram" until the bots, started beside the worker,
        # see it beat, so it is answered with a joke rather than refused for want of a worker.
        api.private_message(4242, "/joke Штирлиц пришел домой")
        wait_until(lambda: jokes_in(4242) or launcher.poll() is not None, 180, "a joke through the whole stack")
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert api.messages_in_chat(4242)[-1].startswith("Штирлиц пришел домой"), api.messages_in_chat(4242)
        assert texts.WORKERS_DOWN not in api.messages_in_chat(4242)
        text = log.read_text()
        assert "started; sizes" not in text.split("started bot-1")[0], "the bot starts while the models load"
        assert "a worker beats; taking Telegram updates" in text
        assert list((tmp_path / "redis").glob("appendonly*")), "the embedded Redis keeps an AOF in REDIS_DATA_DIR"
        assert sorted(started_pids().values()) == ["bot-1", "bot-2", "worker"], "a bot and its hot standby"

        # The serving bot dies: its standby answers, and the launcher starts the dead one again as the standby.
        redis_url = re.search(r"embedded Redis at (\S+)", text).group(1)
        serving = lease_holder_pid(redis_url)
        assert started_pids().get(serving, "").startswith("bot-"), (serving, started_pids())
        os.kill(serving, signal.SIGKILL)
        api.private_message(4343, "/joke Штирлиц пришел домой")
        wait_until(lambda: jokes_in(4343) or launcher.poll() is not None, 60, "a joke from the standby")
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert len(jokes_in(4343)) == 1
        wait_until(lambda: len(started_pids()) == 4, 30, "the killed bot started again")
        restarted = max(started_pids())
        assert b"--await-worker-s" not in Path(f"/proc/{restarted}/cmdline").read_bytes(), "a worker beat: no wait"
        assert re.search(rf"{started_pids()[serving]} exited with -9 after [\d.]+s; starting it again in [\d.]+s",
                         log.read_text())
        wait_until(lambda: lease_holder_pid(redis_url) not in (None, serving), 30, "the standby holds the lease")
        assert process_gone(serving)

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert all(process_gone(pid) for pid in started_pids())
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
