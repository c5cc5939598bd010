"""cancel_and_wait: a task whose cancellation was lost still stops; its own clean-up still runs."""
from __future__ import annotations

import asyncio
import sys

from bot.common.tasks import cancel_and_wait


def start_loop_that_waits_with_wait_for() -> tuple[asyncio.Task, list[asyncio.Future]]:
    """A loop like redis-py's socket writes: each round awaits an operation through asyncio.wait_for."""
    operations: list[asyncio.Future] = []

    async def run() -> None:
        while True:
            operations.append(asyncio.get_running_loop().create_future())
            await asyncio.wait_for(operations[-1], 10)

    return asyncio.create_task(run()), operations


async def test_a_loop_whose_cancellation_wait_for_dropped_is_cancelled_again_until_it_stops():
    task, operations = start_loop_that_waits_with_wait_for()
    await asyncio.sleep(0)
    operations[-1].set_result(None)  # the operation completes as the task is cancelled
    task.cancel()
    _, running = await asyncio.wait({task}, timeout=0.2)
    if sys.version_info < (3, 12):  # CPython gh-86296: wait_for returned the result and the loop went on
        assert running and len(operations) == 2
    assert not await cancel_and_wait(task, timeout_s=5)
    assert task.cancelled()


async def test_a_cancelled_task_finishes_its_clean_up_before_it_is_cancelled_again():
    cleaned_up = asyncio.Event()

    async def run() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.1)  # shorter than REDELIVER_S: a Redis call or two
            cleaned_up.set()
            raise

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    assert not await cancel_and_wait(task)
    assert cleaned_up.is_set() and task.cancelled()


async def test_a_task_that_ignores_every_cancellation_is_returned_once_the_time_is_up():
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass

    task, quick = asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert await cancel_and_wait(task, quick, timeout_s=0.3, redeliver_s=0.1) == {task}
    assert 0.3 <= asyncio.get_running_loop().time() - started < 2
    assert quick.cancelled() and not task.done()
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.done()


async def test_failed_and_finished_tasks_are_waited_for_without_raising():
    async def fail() -> None:
        raise ValueError("boom")

    failed, finished = asyncio.create_task(fail()), asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    assert not await cancel_and_wait(failed, finished)
    assert isinstance(failed.exception(), ValueError) and finished.result() is None
