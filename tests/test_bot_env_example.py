"""`.env.example` documents every setting and is exactly what the generator writes (no drift)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"


def test_every_setting_is_in_env_example_with_its_description():
    text = EXAMPLE.read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert re.search(rf"^(# )?{name.upper()}=", text, re.MULTILINE), f"{name.upper()} missing from .env.example"
        assert field.description, f"Settings.{name} has no description"
        assert field.description.splitlines()[0] in text


def test_env_example_is_up_to_date_with_the_settings_class():
    check = subprocess.run([sys.executable, "scripts/gen_env_example.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_only_bot_token_is_left_for_the_user_to_fill_in():
    assignments = [line for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
                   if line and not line.startswith("#")]
    assert assignments == ["BOT_TOKEN="]


def test_admin_ids_are_read_as_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("ADMIN_IDS", "123, 456,789")
    assert Settings(_env_file=None).admin_ids == [123, 456, 789]


def test_an_empty_metrics_port_as_copied_from_env_example_means_no_server(monkeypatch):
    monkeypatch.setenv("WORKER_METRICS_PORT", "")
    monkeypatch.setenv("BOT_METRICS_PORT", " 9101 ")
    settings = Settings(_env_file=None)
    assert (settings.worker_metrics_port, settings.bot_metrics_port) == (None, 9101)


def test_a_metrics_port_outside_0_to_65535_is_refused(monkeypatch):
    monkeypatch.setenv("BOT_METRICS_PORT", "65536")
    with pytest.raises(ValidationError, match="bot_metrics_port"):
        Settings(_env_file=None)


def test_cpu_weight_sizes_are_comma_separated_known_sizes_and_exclusive(monkeypatch):
    monkeypatch.setenv("CPU_INT8_SIZES", "mini, small")
    monkeypatch.setenv("CPU_BF16_SIZES", "nano")
    monkeypatch.setenv("COMPILE_DECODE", "true")
    settings = Settings(_env_file=None)
    assert (settings.cpu_int8_sizes, settings.cpu_bf16_sizes, settings.compile_decode) == (["mini", "small"], ["nano"], True)
    monkeypatch.setenv("CPU_INT8_SIZES", "")
    assert Settings(_env_file=None).cpu_int8_sizes == []
    monkeypatch.setenv("CPU_INT8_SIZES", "mini,huge")
    with pytest.raises(ValidationError, match="huge"):
        Settings(_env_file=None)
    monkeypatch.setenv("CPU_INT8_SIZES", "mini,nano")
    with pytest.raises(ValidationError, match="nano: listed in both"):
        Settings(_env_file=None)
