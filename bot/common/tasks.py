"""Stopping asyncio tasks so that they do stop.

On Python 3.11, `asyncio.wait_for` returns normally when the task around it is cancelled just as the awaited
operation completes: the cancellation is lost (CPython gh-86296, fixed in 3.12). redis-py wraps every socket
write in `wait_for` once a socket timeout is set (its default), so a loop that talks to Redis can take a
`cancel()` and go on running, and `task.cancel(); await task` then waits for ever. `cancel_and_wait` cancels
again while a task runs on.
"""
from __future__ import annotations

import asyncio

# Long enough for a cancelled task's own clean-up (a Redis call or two) to finish before it is cancelled again.
REDELIVER_S = 0.5


async def cancel_and_wait(*tasks: asyncio.Future, timeout_s: float | None = None,
                          redeliver_s: float = REDELIVER_S) -> set[asyncio.Future]:
    """Cancel `tasks` and wait until each has ended, cancelling again every `redeliver_s` those that run on.

    Returns the tasks still running after `timeout_s` (none without a timeout). Their exceptions are retrieved,
    not raised, as with `gather(..., return_exceptions=True)`.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    running = {task for task in tasks if not task.done()}
    while running:
        for task in running:
            task.cancel()
        wait_s = redeliver_s if deadline is None else min(redeliver_s, deadline - loop.time())
        if wait_s <= 0:
            break
        _, running = await asyncio.wait(running, timeout=wait_s)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    return running
