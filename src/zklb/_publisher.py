"""Publishing `Membership` snapshots: the current one, the listeners given each new one, and waiters.

Private: `zklb.discovery.ServiceWatcher` publishes from the client's worker thread. Readers take the
current snapshot without a lock (one reference swapped per publish); each listener sees strictly
growing versions, never an old snapshot after a newer one; each change is logged in one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from zklb._changes import describe_change
from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["MembershipListener", "MembershipPublisher"]

log = logging.getLogger("zklb.discovery")

#: Called with each new snapshot, on the client's zklb worker thread.
MembershipListener = Callable[[Membership], object]


class MembershipPublisher:
    """The snapshots of one service (``path`` names it in the log), from version 0 (empty) on."""

    def __init__(self, service: str, path: str) -> None:
        self.service = service
        self.path = path
        self.membership = Membership(service=service, version=0)
        self.loaded = threading.Event()  # set by the first publish
        self._published = threading.Condition()
        self._lock = threading.Lock()  # guards _subscribers
        self._subscribers: list[_Subscriber] = []

    def subscribe(self, listener: MembershipListener) -> _Subscriber:
        """Deliver every later snapshot to ``listener``; the caller delivers the current one, if any."""
        subscriber = _Subscriber(listener)
        with self._lock:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, listener: MembershipListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s.listener != listener]

    def unsubscribe_all(self) -> None:
        """Call no listener any more."""
        with self._lock:
            self._subscribers = []

    def wait_for(self, predicate: Callable[[Membership], bool], timeout: float) -> bool:
        """Block until the current snapshot satisfies ``predicate``; False if ``timeout`` s pass first."""
        deadline = time.monotonic() + timeout
        with self._published:
            while not predicate(self.membership):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._published.wait(remaining)
            return True

    def successor(self, instances: tuple[ServiceInstance, ...]) -> Membership | None:
        """The next snapshot, of ``instances``; None (and a warning) if two of them share an id."""
        try:
            return Membership(self.service, self.membership.version + 1, instances)
        except ValueError as exc:  # two znodes claiming one id cannot happen with id == name, but be safe
            log.warning("membership of %s not published: %s", self.path, exc)
            return None

    def derived(self, removed: Collection[str], upserted: Sequence[ServiceInstance]) -> Membership:
        """The next snapshot: the current one less ``removed`` ids, with ``upserted`` added or replaced
        (distinct ids, none held by an instance that stays). O(changes): see `Membership._derive`."""
        return self.membership._derive(self.membership.version + 1, removed, upserted)

    def publish(self, membership: Membership) -> None:
        """Make ``membership`` (`successor` or `derived`) current: wake waiters, log the change, and
        deliver it to listeners."""
        with self._published:
            previous, self.membership = self.membership, membership
            self._published.notify_all()
        if self.loaded.is_set():
            change = describe_change(previous, membership)
            if change is not None:
                log.info("%s: %s (now %d instances)", self.path, change, len(membership))
        else:
            log.debug("%s: loaded %d instances", self.path, len(membership))
        self.loaded.set()
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.deliver(membership)

    def _after_fork_in_child(self) -> None:
        """Fresh locks (another thread may have held one at the fork); the snapshot and listeners stay."""
        self._published = threading.Condition()
        self._lock = threading.Lock()
        loaded = self.loaded.is_set()
        self.loaded = threading.Event()
        if loaded:
            self.loaded.set()
        for subscriber in self._subscribers:
            subscriber._lock = threading.Lock()


class _Subscriber:
    """One listener and the last version it was given, so that it never sees versions go back."""

    __slots__ = ("_last", "_lock", "listener")

    def __init__(self, listener: MembershipListener) -> None:
        self.listener = listener
        self._last = -1
        # Only orders deliveries to this one listener (the first call may race the watcher's thread).
        self._lock = threading.Lock()

    def deliver(self, membership: Membership) -> None:
        with self._lock:
            if membership.version <= self._last:
                return
            self._last = membership.version
            try:
                self.listener(membership)
            except Exception:
                log.exception("membership listener %r failed", self.listener)
