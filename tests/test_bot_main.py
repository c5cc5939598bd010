"""`rujokes-bot` and `rujokes run` refuse to start without a usable BOT_TOKEN, quickly and with
an instruction that says where tokens come from (@BotFather)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.common.bot_token import token_problem
from tests.e2e_stack import BOT_TOKEN
from tests.fake_bot_api import FakeBotAPI

SCRIPTS = Path(sys.executable).parent


def run_script(name: str, cwd: Path, timeout: float = 60, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "REDIS_", "TELEGRAM_", "WEBHOOK_"))}
    executable = shutil.which(name, path=str(SCRIPTS)) or name
    return subprocess.run([executable, *args], env={**clean, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("token", ["", "   ", "hello", "123456789", "123456789:", "123456789:short",
                                   "abc:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PAL Dsaw"])
def test_malformed_tokens_are_rejected(token):
    assert token_problem(token) is not None


def test_a_botfather_shaped_token_is_accepted():
    assert token_problem("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw") is None


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_bot_without_a_usable_token_exits_at_once_pointing_to_botfather(token, tmp_path):
    started = time.monotonic()
    result = run_script("rujokes-bot", tmp_path, BOT_TOKEN=token)
    assert result.returncode == 2
    assert "@BotFather" in result.stderr and "BOT_TOKEN" in result.stderr
    assert time.monotonic() - started < 15


def test_the_token_is_also_read_from_dotenv(tmp_path):
    (tmp_path / ".env").write_text("BOT_TOKEN=still-not-a-token\n")
    result = run_script("rujokes-bot", tmp_path)
    assert result.returncode == 2 and "malformed" in result.stderr


def test_rujokes_run_checks_the_token_before_starting_anything(tmp_path):
    result = run_script("rujokes", tmp_path, 60, "run", BOT_TOKEN="", REDIS_DATA_DIR=str(tmp_path / "redis"))
    assert result.returncode == 2 and "@BotFather" in result.stderr
    assert not (tmp_path / "redis").exists(), "no Redis was started"


def test_a_token_telegram_rejects_exits_with_the_same_instruction(tmp_path, redis_server):
    api = FakeBotAPI.start_in_thread()  # knows another token: every call is 401 Unauthorized
    try:
        result = run_script("rujokes-bot", tmp_path, 90, BOT_TOKEN=BOT_TOKEN, TELEGRAM_API_BASE=api.base_url,
                            REDIS_URL=redis_server.url)
    finally:
        api.stop()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "401" in result.stderr and "@BotFather" in result.stderr
