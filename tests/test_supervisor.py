"""The restart rules `rujokes run` keeps its children alive by, on real child processes (tiny Python scripts)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.common.supervisor import RestartPolicy, Supervisor

FAST = RestartPolicy(settled_s=1.0, first_pause_s=0.2, max_pause_s=0.4, max_quick_exits=3)


def script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_until_stopped(supervisor: Supervisor, timeout_s: float) -> tuple[int | None, float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if (code := supervisor.check()) is not None:
            return code, time.monotonic() - started
        time.sleep(0.02)
    return None, time.monotonic() - started


def starts(supervisor: Supervisor, name: str, caplog) -> int:
    return sum(1 for record in caplog.records if record.getMessage().startswith(f"started {name} (pid"))


@pytest.fixture
def supervisor():
    supervisor = Supervisor(dict(os.environ), FAST)
    yield supervisor
    supervisor.stop_all(grace_s=2)


def test_pause_doubles_with_each_quick_exit_up_to_its_cap():
    policy = RestartPolicy(first_pause_s=1, max_pause_s=30)
    assert [policy.pause_after(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_keeps_failing_at_start_is_started_again_with_pauses_then_stops_the_stack(supervisor, caplog):
    caplog.set_level("INFO", logger="bot.common.supervisor")
    supervisor.start("worker", script("import sys; sys.exit(1)"))
    code, took_s = run_until_stopped(supervisor, timeout_s=20)
    assert code == 1
    assert starts(supervisor, "worker", caplog) == FAST.max_quick_exits  # the first start and two more
    assert took_s >= FAST.first_pause_s + 2 * FAST.first_pause_s - 0.05, "pauses of 0.2 then 0.4 s between starts"
    assert "3 times in a row" in caplog.text


def test_a_configuration_error_stops_the_stack_at_once_and_is_not_retried(supervisor, caplog):
    caplog.set_level("INFO", logger="bot.common.supervisor")
    supervisor.start("bot", script("import sys; sys.exit(2)"))
    code, _ = run_until_stopped(supervisor, timeout_s=20)
    assert code == 2
    assert starts(supervisor, "bot", caplog) == 1


def test_a_killed_child_that_had_settled_is_started_again_at_once_and_the_others_keep_running(supervisor, caplog):
    caplog.set_level("INFO", logger="bot.common.supervisor")
    forever = script("import time; time.sleep(600)")
    bot = supervisor.start("bot-1", forever)
    standby = supervisor.start("bot-2", forever)
    first_pid, standby_pid = bot.process.pid, standby.process.pid
    time.sleep(FAST.settled_s + 0.1)
    for _ in range(3):  # a crash now and then is never a reason to give up
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait()
        killed_at = time.monotonic()
        assert supervisor.check() is None
        assert bot.running and time.monotonic() - killed_at < 0.5, "settled: no pause"
        time.sleep(FAST.settled_s + 0.1)
    assert bot.process.pid != first_pid
    assert standby.running and standby.process.pid == standby_pid
    assert starts(supervisor, "bot-1", caplog) == 4 and starts(supervisor, "bot-2", caplog) == 1


def test_a_clean_exit_is_started_again_too(supervisor, caplog):
    """A bot that lost its lease stops with code 0, to start again as a standby."""
    caplog.set_level("INFO", logger="bot.common.supervisor")
    child = supervisor.start("bot", script("import time; time.sleep(1.2)"))
    code, _ = run_until_stopped(supervisor, timeout_s=1.6)
    assert code is None and child.running
    assert starts(supervisor, "bot", caplog) == 2


def test_restart_with_changes_the_next_start_only(supervisor, tmp_path):
    """rujokes run starts its bots with --await-worker-s and drops it once a worker beat."""
    marks = tmp_path / "marks"
    child = supervisor.start("bot", script(f"open({str(marks)!r}, 'a').write('first\\n'); import time; time.sleep(1.2)"))
    supervisor.restart_with("bot", script(f"open({str(marks)!r}, 'a').write('second\\n'); import time; time.sleep(600)"))
    first_pid = child.process.pid
    code, _ = run_until_stopped(supervisor, timeout_s=1.6)
    assert code is None and child.running and child.process.pid != first_pid
    deadline = time.monotonic() + 30
    while marks.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marks.read_text().split() == ["first", "second"]


def test_after_a_stop_request_nothing_is_started_again_and_stop_all_kills_what_ignores_sigterm(supervisor, caplog,
                                                                                                tmp_path):
    caplog.set_level("INFO", logger="bot.common.supervisor")
    polite = supervisor.start("worker", script("import time; time.sleep(600)"))
    ready = tmp_path / "ready"
    stubborn = supervisor.start("bot", script(
        f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path({str(ready)!r}).touch(); "
        "time.sleep(600)"))
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:  # its handler is set
        time.sleep(0.02)
    supervisor.request_stop(signal.SIGTERM)
    polite.process.wait(timeout=10)
    assert supervisor.check() == 0
    assert starts(supervisor, "worker", caplog) == 1, "an exit after a stop request is not a crash"
    started = time.monotonic()
    supervisor.stop_all(grace_s=0.5)
    assert stubborn.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert "bot did not stop within" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_children_of_a_launcher_killed_with_sigkill_stop_too(tmp_path):
    pid_file = tmp_path / "child.pid"
    launcher = subprocess.Popen(script(
        "import os, sys, time\n"
        "from bot.common.supervisor import Supervisor\n"
        "supervisor = Supervisor(dict(os.environ))\n"
        "child = supervisor.start('worker', [sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.process.pid))\n"
        "time.sleep(600)\n"), cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and launcher.poll() is None, "the launcher script did not start"
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{child_pid}").exists() and \
                Path(f"/proc/{child_pid}/stat").read_text().split()[2] != "Z":
            time.sleep(0.05)
        assert not Path(f"/proc/{child_pid}").exists() or Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z"
    finally:
        if launcher.poll() is None:
            launcher.kill()
