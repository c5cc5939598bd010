"""A bounded shutdown: named stages, each with a timeout, each logged when it starts and ends.

`run_stages` runs the stages in order against one deadline. Each gets its share of the time still
left (so what quick stages leave unused passes on to the later ones): it runs for up to 80% of that;
one still running then is cancelled (a warning names it) and gets the other 20% to unwind, after
which it is left behind (another warning) and the next stage starts. A stage that fails is logged
and the next one starts. So the whole shutdown ends within the budget, whatever a stage does, as
long as the event loop itself runs.

For what the event loop cannot bound (a blocked loop, a thread that holds up the interpreter's
exit), `start_watchdog` ends the process with os._exit once the budget and a margin are spent, and
`run_bounded` replaces asyncio.run, which waits without limit for tasks that ignore cancellation.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from bot.common.logs import log_event
from bot.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RUN_FRACTION = 0.8  # of a stage's share: how long it runs before it is cancelled; the rest is for unwinding
WATCHDOG_EXIT_CODE = 1


@dataclass(frozen=True)
class Stage:
    name: str
    step: Callable[[], Awaitable[Any]]
    share: float  # of the total budget


@dataclass(frozen=True)
class StageReport:
    name: str
    outcome: str  # ok | error | timeout (cancelled, unwound) | abandoned (ignored cancellation)
    duration_s: float


def _log(level: int, stage: str, event: str, message: str = "", **fields: Any) -> None:
    log_event(log, f"shutdown stage={stage} event={event}", {"shutdown_stage": stage, "event": event, **fields},
              level=level, message=message, hidden=("shutdown_stage", "event"))


async def run_stage(stage: Stage, timeout_s: float, unwind_s: float) -> StageReport:
    """Run one stage within timeout_s (+ unwind_s to react to being cancelled); never raises."""
    started = time.monotonic()
    _log(logging.INFO, stage.name, "start", timeout_s=round(timeout_s, 3))

    async def step() -> Any:
        return await stage.step()

    task = asyncio.create_task(step(), name=f"shutdown:{stage.name}")
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    outcome = "ok"
    if not done:
        _log(logging.WARNING, stage.name, "overrun", f"still running after {timeout_s:.2f}s; cancelling it",
             timeout_s=round(timeout_s, 3))
        outcome = "timeout"
        if await cancel_and_wait(task, timeout_s=unwind_s):
            outcome = "abandoned"
            _log(logging.WARNING, stage.name, "abandoned",
                 f"ignored cancellation for {unwind_s:.2f}s; leaving it behind")
    if task.done() and not task.cancelled() and task.exception() is not None:
        outcome = "error"
        error = task.exception()
        _log(logging.WARNING, stage.name, "error", f"{type(error).__name__}: {error}")
    duration_s = time.monotonic() - started
    _log(logging.INFO, stage.name, "end", outcome=outcome, duration_s=round(duration_s, 3))
    return StageReport(stage.name, outcome, duration_s)


async def run_stages(stages: list[Stage], total_s: float) -> list[StageReport]:
    """Each stage in order, all within total_s: a stage gets its share of the time left to it and the
    stages after it (share / the shares of those stages)."""
    deadline = time.monotonic() + total_s
    reports = []
    for index, stage in enumerate(stages):
        shares_left = sum(later.share for later in stages[index:])
        budget = max(0.0, deadline - time.monotonic()) * (stage.share / shares_left if shares_left > 0 else 1.0)
        reports.append(await run_stage(stage, budget * RUN_FRACTION, budget * (1 - RUN_FRACTION)))
    return reports


def start_watchdog(after_s: float) -> threading.Timer:
    """End the process (exit code 1) if it still runs after `after_s`: the last resort of a bounded shutdown."""

    def expire() -> None:
        log.error("shutdown did not end within %.1fs; exiting now", after_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(WATCHDOG_EXIT_CODE)

    timer = threading.Timer(after_s, expire)
    timer.daemon = True
    timer.start()
    return timer


def run_bounded(main: Coroutine[Any, Any, Any], leftover_s: float = 1.0) -> Any:
    """asyncio.run(main), except that tasks still running at the end get `leftover_s` to end once cancelled
    and are then left behind; asyncio.run would wait for them without limit."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            if leftovers:
                pending = loop.run_until_complete(cancel_and_wait(*leftovers, timeout_s=leftover_s))
                for task in pending:
                    log.warning("task %s ignored cancellation at exit; leaving it behind", task.get_name())
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), leftover_s))
        except (asyncio.TimeoutError, RuntimeError) as error:
            log.warning("event loop cleanup cut short: %r", error)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
