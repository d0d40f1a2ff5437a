"""`ServiceWatcher`: live membership of one service, read incrementally from ZooKeeper.

Rules of this module:

- kazoo's watch callbacks and state listener only record *what* changed (children list, one child's
  data, the session) under a short lock and wake the watcher's own thread; all reads happen there.
- A change costs reads for the changed znodes only: the children list (one read) when children come or
  go, then one pipelined ``get_async`` per added child or per child whose data watch fired.
- kazoo drops every watch when the connection drops. After any reconnect the watcher re-arms them with
  one pipelined ``exists`` per known child and re-reads only the children whose ``mzxid`` moved.
- While the session is SUSPENDED or LOST the last known membership stays published; nothing is
  cleared because ZooKeeper is away.
- A missing service path is not an error: the watcher waits for it with an ``exists`` watch, and if the
  path is deleted later it goes back to waiting.
- A malformed child is skipped with one WARNING naming its path and the reason (again only when its
  data changes); it never stops the watcher.
- Every request is bounded (timeout + bounded retry); a failed pass keeps its work pending and runs
  again on the next reconnect.
- Listeners get immutable `Membership` snapshots on the watcher's thread, never under a lock; one that
  raises is logged and the others still run.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from zklb._zk import (
    REQUEST_TIMEOUT,
    TRANSIENT_ERRORS,
    ClientHandle,
    bounded_retry,
    check_root,
    check_service,
    join_path,
)
from zklb.codecs import Codec
from zklb.codecs.curator import CuratorCodec
from zklb.errors import ClosedError, InvalidInstance, RegistryError
from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["MembershipListener", "ServiceWatcher"]

log = logging.getLogger("zklb.discovery")

#: Called with each new snapshot, on the watcher's thread.
MembershipListener = Callable[[Membership], object]


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Child:
    """What the watcher knows of one child znode: the version it read and what it decoded to."""

    mzxid: int
    instance: ServiceInstance | None  # None: malformed or disabled, so not served


class ServiceWatcher:
    """Watches ``/<root>/<service>`` and publishes its live instances as `Membership` snapshots.

    ``client`` is a hosts string (the watcher makes, starts and stops its own kazoo client) or a started
    `KazooClient` (never stopped here). ``start()`` returns once the first membership is loaded.
    """

    def __init__(
        self,
        client: str | KazooClient,
        service: str,
        *,
        root: str = "/services",
        codec: Codec | None = None,
        session_timeout: float = 10.0,
    ) -> None:
        self.service = check_service(service)
        self.root = check_root(root)
        self.path = join_path(self.root, self.service)
        self.codec: Codec = codec or CuratorCodec()
        self._handle = ClientHandle(client, session_timeout=session_timeout)
        self._client: KazooClient | None = None
        self._state = _State.NEW
        self._membership = Membership(service=self.service, version=0)
        self._children: dict[str, _Child] = {}
        self._listeners: list[_Subscriber] = []
        # Pending work, written by kazoo's threads and taken by ours; guarded by _lock.
        self._lock = threading.Lock()
        self._children_dirty = True
        self._rearm = False
        self._data_dirty: set[str] = set()
        self._wake = threading.Event()
        self._loaded = threading.Event()
        self._published = threading.Condition()
        self._thread: threading.Thread | None = None
        self._reads = 0

    # -- public API ---------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The latest snapshot (the last known one while ZooKeeper is unreachable)."""
        return self._membership

    @property
    def read_count(self) -> int:
        """ZooKeeper read requests (children lists, data, exists) issued so far; for tests and metrics."""
        return self._reads

    def start(self, timeout: float = 10.0) -> Self:
        """Connect if needed, begin watching and return once the first membership is loaded.

        Raises `RegistryError` if ZooKeeper does not answer within ``timeout`` seconds (the watcher keeps
        trying in the background; ``close()`` it to give up).
        """
        if self._state is _State.CLOSED:
            raise ClosedError(f"watcher of {self.path} is closed")
        if self._state is _State.NEW:
            self._state = _State.STARTED
            self._client = self._handle.get(timeout)
            self._client.add_listener(self._on_state)
            self._thread = threading.Thread(target=self._run, name=f"zklb-watch-{self.service}", daemon=True)
            self._thread.start()
            self._wake.set()
        if not self._loaded.wait(timeout):
            raise RegistryError(f"membership of {self.path} not loaded within {timeout:g} s")
        return self

    def add_listener(self, listener: MembershipListener) -> None:
        """Call ``listener(membership)`` on every new snapshot (on the watcher's thread, not kazoo's).

        If a membership is already loaded the listener is first called with it (on the caller's
        thread), so it starts in sync. Each listener sees strictly growing versions, never an old
        snapshot after a newer one.
        """
        subscriber = _Subscriber(listener)
        with self._lock:
            self._listeners.append(subscriber)
        if self._loaded.is_set():
            subscriber.deliver(self._membership)

    def remove_listener(self, listener: MembershipListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = [s for s in self._listeners if s.listener != listener]

    def wait_for(self, predicate: Callable[[Membership], bool], timeout: float) -> bool:
        """Block until the current snapshot satisfies ``predicate``; False if ``timeout`` s pass first."""
        deadline = time.monotonic() + timeout
        with self._published:
            while not predicate(self._membership):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._published.wait(remaining)
            return True

    def close(self) -> None:
        """Stop watching; the kazoo client is stopped only if the watcher created it. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=REQUEST_TIMEOUT * 2)
        client = self._client
        if client is not None:
            client.remove_listener(self._on_state)
            # kazoo has no API to drop a watch; ours become no-ops once closed.
        self._handle.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self._membership
        return f"<ServiceWatcher {self.path} {self._state.value} version={m.version} instances={len(m)}>"

    # -- kazoo callbacks: record and wake, nothing else --------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            with self._lock:
                # kazoo forgot every watch when the connection dropped: re-arm them all.
                self._rearm = True
                self._children_dirty = True
            self._wake.set()

    def _on_children(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is _State.CLOSED:
            return  # connection-state notice; the CONNECTED listener handles recovery
        with self._lock:
            self._children_dirty = True
        self._wake.set()

    def _on_data(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is _State.CLOSED:
            return
        with self._lock:
            if event.path == self.path:
                self._children_dirty = True  # the service path itself appeared or went away
            elif event.type == EventType.CHANGED:
                self._data_dirty.add(event.path.rsplit("/", 1)[-1])
            else:
                self._children_dirty = True
        self._wake.set()

    # -- the watcher thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._state is _State.CLOSED:
                return
            with self._lock:
                children_dirty, self._children_dirty = self._children_dirty, False
                rearm, self._rearm = self._rearm, False
                data_dirty, self._data_dirty = self._data_dirty, set()
            if not (children_dirty or rearm or data_dirty):
                continue
            try:
                self._sync(children_dirty or rearm, rearm, data_dirty)
            except (KazooException, *TRANSIENT_ERRORS) as exc:
                # Keep the work for the next reconnect; the last membership stays published meanwhile.
                log.info("membership sync of %s deferred: %r", self.path, exc)
                with self._lock:
                    self._children_dirty = True
                    self._rearm = self._rearm or rearm
                    self._data_dirty |= data_dirty
                client = self._client
                if client is not None and client.connected:
                    # Connected but failing (e.g. a timeout): try again shortly rather than wait forever.
                    threading.Timer(1.0, self._wake.set).start()
            except Exception:  # a bug here must not kill the only thread that keeps membership fresh
                log.exception("unexpected error syncing membership of %s", self.path)

    def _read(self, count: int = 1) -> None:
        self._reads += count

    def _sync(self, list_children: bool, rearm: bool, data_dirty: set[str]) -> None:
        client = self._client
        assert client is not None
        known = self._children
        changed = False
        to_read: set[str] = set()
        if list_children:
            current = set(self._list_children(client) or ())
            removed = known.keys() - current
            if removed:
                known = {name: child for name, child in known.items() if name in current}
                changed = True
            to_read = current - known.keys()
            if rearm:
                to_read |= self._moved_since_read(client, known)
        to_read |= data_dirty & known.keys()
        if to_read:
            known = dict(known)
            changed |= self._read_children(client, to_read, known)
        if changed or not self._loaded.is_set():
            self._children = known
            self._publish(tuple(c.instance for c in known.values() if c.instance is not None))

    def _list_children(self, client: KazooClient) -> list[str] | None:
        """The children of the service path, with a watch; None (and an exists watch) if it is absent."""
        while True:
            try:
                self._read()
                names: list[str] = bounded_retry(
                    lambda: client.get_children_async(self.path, watch=self._on_children).get(
                        timeout=REQUEST_TIMEOUT
                    )
                )
                return names
            except NoNodeError:
                pass
            self._read()
            stat = bounded_retry(
                lambda: client.exists_async(self.path, watch=self._on_data).get(timeout=REQUEST_TIMEOUT)
            )
            if stat is None:
                return None
            # Created between the two calls: list it now.

    def _moved_since_read(self, client: KazooClient, known: dict[str, _Child]) -> set[str]:
        """Re-arm data watches on every known child; return those whose data moved while unwatched."""
        pending = {name: client.exists_async(f"{self.path}/{name}", watch=self._on_data) for name in known}
        self._read(len(pending))
        moved = set()
        for name, result in pending.items():
            stat = result.get(timeout=REQUEST_TIMEOUT)
            if stat is None or stat.mzxid != known[name].mzxid:
                moved.add(name)
        return moved

    def _read_children(self, client: KazooClient, names: set[str], known: dict[str, _Child]) -> bool:
        """Read ``names`` pipelined (one get_async each, re-arming data watches) into ``known``."""
        # Sorted, so that `known` stays nearly in id order and each snapshot's sort is close to O(n).
        pending: dict[str, Any] = {
            name: client.get_async(f"{self.path}/{name}", watch=self._on_data) for name in sorted(names)
        }
        self._read(len(pending))
        changed = False
        for name, result in pending.items():
            try:
                data, stat = result.get(timeout=REQUEST_TIMEOUT)
            except NoNodeError:
                changed |= known.pop(name, None) is not None
                continue
            previous = known.get(name)
            if previous is not None and previous.mzxid == stat.mzxid:
                continue
            known[name] = _Child(stat.mzxid, self._decode(name, data))
            changed = True
        return changed

    def _decode(self, name: str, data: bytes) -> ServiceInstance | None:
        try:
            return self.codec.decode(self.service, name, data)
        except InvalidInstance as exc:
            log.warning("skipping malformed instance %s/%s: %s", self.path, name, exc)
        except Exception as exc:  # a codec bug must not stop the watcher either
            log.warning("skipping instance %s/%s: codec failed: %r", self.path, name, exc)
        return None

    def _publish(self, instances: tuple[ServiceInstance, ...]) -> None:
        try:
            membership = Membership(self.service, self._membership.version + 1, instances)
        except ValueError as exc:  # two znodes claiming one id cannot happen with id == name, but be safe
            log.warning("membership of %s not published: %s", self.path, exc)
            return
        with self._published:
            self._membership = membership
            self._published.notify_all()
        self._loaded.set()
        with self._lock:
            subscribers = list(self._listeners)
        for subscriber in subscribers:
            subscriber.deliver(membership)


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
