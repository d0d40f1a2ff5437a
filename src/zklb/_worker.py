"""One zklb thread per kazoo client: the ZooKeeper work of every watcher and registry on that client.

Rules of this module:

- Threads are per client, not per service: fifty balancers on one `KazooClient` share one worker
  thread and one kazoo state listener. The worker exists while something uses it (`ClientWorker.attach`
  / `detach` count users) and its thread ends, and its listener leaves the client, with the last user.
- kazoo's threads only record and wake: the state listener fans the new state out to subscribers, which
  must not block; everything that talks to ZooKeeper runs on the worker thread, one task at a time.
- Timers (retries with backoff, the jittered re-sync after a reconnect) are entries in one heap on the
  same thread, never a `threading.Timer` each.
- A task that raises is logged and the thread goes on: nothing a task does can stop the worker.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from kazoo.client import KazooClient

from zklb import _fork
from zklb._outage import Outage

__all__ = ["ClientWorker", "Job", "Timer"]

log = logging.getLogger("zklb")

StateListener = Callable[[str], object]

_registry_lock = threading.Lock()
_workers: weakref.WeakKeyDictionary[KazooClient, ClientWorker] = weakref.WeakKeyDictionary()


def _forget_workers() -> None:
    """In a fork's child: the parent's workers have no thread here, and the table's lock may be held."""
    global _registry_lock, _workers  # noqa: PLW0603 - the module's own table, replaced whole
    _registry_lock = threading.Lock()
    _workers = weakref.WeakKeyDictionary()


_fork.on_child(_forget_workers)


class Timer:
    """A task scheduled for later on a `ClientWorker`; ``cancel()`` makes it a no-op."""

    __slots__ = ("cancelled", "task", "when")

    def __init__(self, when: float, task: Callable[[], object]) -> None:
        self.when = when
        self.task = task
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the task (if it has not started yet)."""
        self.cancelled = True


class ClientWorker:
    """The worker thread and state fan-out of one kazoo client; get it with `ClientWorker.attach`."""

    def __init__(self, client: KazooClient) -> None:
        self._client_ref = weakref.ref(client)
        self._users = 0
        self._cond = threading.Condition(threading.Lock())
        self._ready: deque[Callable[[], object]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._listeners: list[StateListener] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Registration path -> the registry holding it: registries sharing a client share its session.
        self._claims: dict[str, object] = {}
        self._services: list[tuple[StateListener, str]] = []  # copy-on-write, as _listeners
        self._outage = Outage()

    # -- users ------------------------------------------------------------------------------------------

    @classmethod
    def attach(cls, client: KazooClient) -> ClientWorker:
        """The worker of ``client`` (made and started on first use), counting one more user."""
        with _registry_lock:
            worker = _workers.get(client)
            if worker is None or worker._stopping:
                worker = cls(client)
                _workers[client] = worker
                client.add_listener(worker._on_state)
                worker._thread = threading.Thread(
                    target=worker._run, name=f"zklb-worker-{id(client):x}", daemon=True
                )
                worker._thread.start()
            worker._users += 1
            return worker

    def detach(self, timeout: float = 10.0) -> None:
        """One user fewer; the last one stops the thread and removes the listener from the client.

        Waits at most ``timeout`` seconds for a task in progress (a ZooKeeper request) to end.
        """
        with _registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            self._stopping = True
            client = self._client_ref()
            if client is not None and _workers.get(client) is self:
                del _workers[client]
        if client is not None:
            client.remove_listener(self._on_state)
        with self._cond:
            self._ready.clear()
            self._timers.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def on_worker_thread(self) -> bool:
        """True when called from this worker's thread."""
        return threading.current_thread() is self._thread

    # -- registration paths ----------------------------------------------------------------------------

    def claim(self, path: str, owner: object) -> bool:
        """Record ``owner`` as holding ``path``; False if another owner already does."""
        with self._cond:
            holder = self._claims.setdefault(path, owner)
            return holder is owner

    def release(self, path: str, owner: object) -> None:
        """``owner`` no longer holds ``path`` (nothing happens if it did not)."""
        with self._cond:
            if self._claims.get(path) is owner:
                del self._claims[path]

    def release_all(self, owner: object) -> None:
        """``owner`` holds no path any more."""
        with self._cond:
            for path in [p for p, holder in self._claims.items() if holder is owner]:
                del self._claims[path]

    # -- connection state -------------------------------------------------------------------------------

    def subscribe(self, listener: StateListener, *, service: str | None = None) -> None:
        """Call ``listener(state)`` on kazoo's thread at each connection state change; it must not block.

        ``service`` names what a watcher serves, for the log line that says whose membership is stale.
        """
        with self._cond:
            self._listeners = [*self._listeners, listener]
            if service is not None:
                self._services = [*self._services, (listener, service)]

    def unsubscribe(self, listener: StateListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._cond:
            self._listeners = [x for x in self._listeners if x != listener]
            self._services = [(x, name) for x, name in self._services if x != listener]

    def _on_state(self, state: str) -> None:
        self._outage.on_state(state, self._client_ref(), [name for _, name in self._services])
        for listener in self._listeners:  # a copy-on-write list: no lock on kazoo's thread
            try:
                listener(state)
            except Exception:
                log.exception("zklb state listener %r failed", listener)

    # -- scheduling -------------------------------------------------------------------------------------

    def call_soon(self, task: Callable[[], object]) -> None:
        """Run ``task`` on the worker thread, after the tasks already queued."""
        with self._cond:
            if self._stopping:
                return
            self._ready.append(task)
            self._cond.notify()

    def call_later(self, delay: float, task: Callable[[], object]) -> Timer:
        """Run ``task`` on the worker thread after ``delay`` seconds (0 or less: as soon as it can)."""
        timer = Timer(time.monotonic() + max(delay, 0.0), task)
        with self._cond:
            if not self._stopping:
                heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
                self._cond.notify()
        return timer

    def _next_task(self) -> Callable[[], object] | None:
        """The next task to run, waiting for one; None when the worker stops."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                timers = self._timers
                while timers and timers[0][0] <= now:
                    timer = heapq.heappop(timers)[2]
                    if not timer.cancelled:
                        self._ready.append(timer.task)
                if self._ready:
                    return self._ready.popleft()
                self._cond.wait(timers[0][0] - now if timers else None)
            return None

    def _run(self) -> None:
        while True:
            task = self._next_task()
            if task is None:
                return
            try:
                task()
            except Exception:  # one component's bug must not stop the others' updates
                log.exception("zklb task %r failed", task)
            del task  # drop the reference before waiting: a closed component must be collectable


class Job:
    """One task of a component on a worker, run however often it is asked for, but never piled up.

    ``request()`` queues one run (a run already queued covers it); ``request(delay)`` sets a timer for
    one (an earlier timer already set covers it; a run asked for now replaces the timer). A run clears
    the queued mark before the task starts, so a request made during the task runs it again after.
    ``cancel()`` makes every queued or timed run a no-op, for good.
    """

    __slots__ = ("_cancelled", "_lock", "_queued", "_task", "_timer", "_worker")

    def __init__(self, worker: ClientWorker, task: Callable[[], object]) -> None:
        self._worker = worker
        self._task = task
        self._lock = threading.Lock()
        self._queued = False
        self._timer: Timer | None = None
        self._cancelled = False

    def request(self, delay: float = 0.0) -> None:
        """Run the task on the worker now (after what is queued) or after ``delay`` seconds."""
        with self._lock:
            if self._cancelled or self._queued:
                return
            if delay > 0:
                if self._timer is None:
                    self._timer = self._worker.call_later(delay, self.request)
                return
            self._queued = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._worker.call_soon(self._run)

    def cancel(self) -> None:
        """No run of this job happens from now on (one in progress finishes)."""
        with self._lock:
            self._cancelled = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _run(self) -> None:
        with self._lock:
            self._queued = False
            if self._cancelled:
                return
        self._task()
