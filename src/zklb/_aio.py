"""asyncio without blocking the loop: awaiting a `SharedStart`, and running a blocking call off the loop.

zklb's lifecycle calls (connect, register, drain, close) wait for ZooKeeper with deadlines. On an event
loop they must not: the coroutine versions here run the blocking call on a thread of its own and await
its result, so the loop keeps serving while ZooKeeper answers (or does not). A thread per call rather
than the loop's default executor: these calls are rare, may wait seconds, and must not queue behind (or
hold up) the application's own executor work, nor keep the interpreter from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

from zklb._starting import SharedStart

__all__ = ["run_off_loop", "wait_attempt"]

T = TypeVar("T")


async def wait_attempt(attempt: SharedStart, timeout: float) -> bool:
    """Wait for ``attempt`` to end without blocking the loop; False if ``timeout`` seconds pass first."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ended.done():
            ended.set_result(None)

    def wake_threadsafe() -> None:
        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:  # the loop is closed: this waiter gave up long ago
            pass

    attempt.add_done_callback(wake_threadsafe)
    try:
        await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        return False
    return True


async def run_off_loop(func: Callable[[], T], name: str, *, orphan: Callable[[T], object] | None = None) -> T:
    """``func()`` on a new daemon thread, awaited; its exception is raised here.

    If the awaiting task is cancelled, the call still runs to its end (it is bounded by its own
    deadline), and ``orphan(result)`` then undoes, off the loop, what nobody will receive (e.g. closes a
    registration).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def undo(result: T) -> None:
        if orphan is not None:
            threading.Thread(target=orphan, args=(result,), name=f"{name}-undo", daemon=True).start()

    def fail(error: BaseException) -> None:
        if not future.cancelled():
            future.set_exception(error)

    def deliver(result: T) -> None:
        if future.cancelled():
            undo(result)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = context.run(func)
        except BaseException as exc:  # handed to the awaiting task, which raises it
            _post(loop, functools.partial(fail, exc))
            return
        if not _post(loop, functools.partial(deliver, result)):
            undo(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> bool:
    """Run ``callback`` on ``loop``; False if the loop is closed (nobody is waiting any more)."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        return False
    return True
