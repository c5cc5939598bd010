"""Child processes that are started again when they exit: what `rujokes run` keeps alive.

A child that exits while the stack runs is started again, at once when it had run for `settled_s`,
else after a pause that doubles with each quick exit in a row: a killed worker or bot comes back, one
that cannot start does not spin. Two outcomes stop the stack instead: a child that exits with a
configuration error (exit code 2: bad settings, a token Telegram rejects), which a restart would only
repeat, and `max_quick_exits` quick exits in a row.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from bot.queue.connection import die_with_parent

log = logging.getLogger(__name__)

CONFIGURATION_ERROR = 2  # load_settings, rujokes-bot's token checks


@dataclass
class RestartPolicy:
    settled_s: float = 30.0  # a child that ran this long had started well: its exit is a crash, not a failed start
    first_pause_s: float = 1.0
    max_pause_s: float = 30.0
    max_quick_exits: int = 5

    def pause_after(self, quick_exits: int) -> float:
        """Before the next start, after `quick_exits` quick exits in a row (0: it had settled)."""
        return 0.0 if quick_exits == 0 else min(self.max_pause_s, self.first_pause_s * 2 ** (quick_exits - 1))


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    start_at: float | None = None  # when it is to be started again (it exited)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def module_command(module: str) -> list[str]:
    # `python -m` rather than the console scripts: works without an activated virtualenv.
    return [sys.executable, "-m", module]


class Supervisor:
    def __init__(self, env: dict[str, str], policy: RestartPolicy | None = None) -> None:
        self.env = env
        self.policy = policy or RestartPolicy()
        self.children: dict[str, Child] = {}
        self.stopping = False  # a signal came: nothing is started again

    def request_stop(self, signum: int) -> None:
        """Pass `signum` on to the children (a signal handler may call this) and start none again."""
        self.stopping = True
        self.signal_all(signum)

    def start(self, name: str, command: list[str]) -> Child:
        self.children[name] = child = Child(name, command)
        self._spawn(child)
        return child

    def restart_with(self, name: str, command: list[str]) -> None:
        """Start `name` with `command` from its next start on; a running child is left as it is."""
        self.children[name].command = command

    def _spawn(self, child: Child) -> None:
        # A launcher killed hard takes its children down with it, as it does its embedded Redis.
        child.process = subprocess.Popen(child.command, env=self.env,
                                         preexec_fn=die_with_parent if sys.platform == "linux" else None)
        child.started_at, child.start_at = time.monotonic(), None
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def check(self) -> int | None:
        """Start again the children whose pause is over; None while the stack runs, else its exit code."""
        if self.stopping:
            return 0
        now = time.monotonic()
        for child in self.children.values():
            if child.start_at is None:  # running, unless it has just exited
                if child.process is None or (code := child.process.poll()) is None:
                    continue
                ran_s = now - child.started_at
                if code == CONFIGURATION_ERROR:
                    log.error("%s exited with a configuration error (code %d); stopping the stack", child.name, code)
                    return code
                child.quick_exits = child.quick_exits + 1 if ran_s < self.policy.settled_s else 0
                if child.quick_exits >= self.policy.max_quick_exits:
                    log.error("%s exited %d times in a row within %.0fs of starting (last code %s); stopping the "
                              "stack", child.name, child.quick_exits, self.policy.settled_s, code)
                    return code or 1
                pause_s = self.policy.pause_after(child.quick_exits)
                log.warning("%s exited with %s after %.1fs; starting it again in %.1fs", child.name, code, ran_s,
                            pause_s)
                child.start_at = now + pause_s
            if now >= child.start_at:
                self._spawn(child)
        return None

    def signal_all(self, signum: int) -> None:
        for child in self.children.values():
            if child.running:
                child.process.send_signal(signum)

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM to every child, then SIGKILL to those still running after `grace_s`; none is started again."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children.values():
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.name, grace_s)
                child.process.kill()
                child.process.wait()
