"""`SharedStart`: one start attempt, run in the background, that any number of callers wait on together.

Why: the first ``get_server()`` of a balancer nobody started must not do ZooKeeper I/O on the caller's
thread, and three threads arriving together with ZooKeeper down must fail together after one timeout,
not one after another. An event loop must not wait at all: ``astart()`` is told when the attempt ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["SharedStart"]

log = logging.getLogger("zklb")


class SharedStart:
    """Runs ``target`` once on a short-lived thread; ``wait`` and ``add_done_callback`` observe it.

    ``finish`` may also be called from outside (a ``close()`` that must wake every waiter at once):
    the first outcome wins.
    """

    def __init__(self, target: Callable[[], None], name: str, deadline: float) -> None:
        self._target = target
        #: When the attempt gives up (a `time.monotonic()` reading), for callers that would wait longer.
        self.deadline = deadline
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[], object]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait for the outcome; False if ``timeout`` seconds pass first."""
        return self._done.wait(timeout)

    def add_done_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the attempt ends (now, if it has); it must not block."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def finish(self, error: BaseException | None) -> None:
        """Record the outcome (None: started) and wake every waiter; later calls change nothing."""
        with self._lock:
            if self._done.is_set():
                return
            self.error = error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one waiter's callback must not fail the start, or close(), for others
                log.exception("start callback %r failed", callback)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # handed to the waiters, who raise it
            self.finish(exc)
        else:
            self.finish(None)
