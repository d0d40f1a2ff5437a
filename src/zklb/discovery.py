"""`ServiceWatcher`: live membership of one service, read incrementally from ZooKeeper.

Rules of this module:

- kazoo's watch callbacks and state listener only record *what* changed (children list, one child's
  data, the session) under a short lock and schedule a sync on the client's zklb worker thread
  (`zklb._worker`), shared by every watcher on that client; all reads happen there.
- A change costs reads for the changed znodes only: the children list (one read) when children come or
  go, then one pipelined ``get_async`` per added child or per child whose data watch fired.
- kazoo drops every watch when the connection drops. After any reconnect the watcher waits a random
  delay in ``[0, resync_delay]`` (so that a fleet of clients does not hit the ensemble in one burst),
  then re-arms them with one pipelined ``exists`` per known child and re-reads only the children whose
  ``mzxid`` moved.
- While the session is SUSPENDED or LOST the last known membership stays published; nothing is
  cleared because ZooKeeper is away.
- ``start()`` is all or nothing: if the first membership is not loaded in time it undoes everything
  (worker, state listener, kazoo watches, an owned client) and may be called again. ``close()`` removes
  every callback the watcher put on the client; nothing revives a closed watcher.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from zklb import _fork
from zklb._changes import describe_change
from zklb._client import ClientHandle
from zklb._worker import ClientWorker, Job
from zklb._zk import (
    DEFAULT_REQUEST_TIMEOUT,
    TRANSIENT_ERRORS,
    bounded_retry,
    check_root,
    check_service,
    check_timeout,
    connection_state,
    drop_watches,
)
from zklb.codecs import Codec, resolve_codec, service_path
from zklb.errors import ClosedError, InstanceSkipped, InvalidInstance, RegistryError, ZklbError
from zklb.health import Connection
from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["MembershipListener", "ServiceWatcher"]

log = logging.getLogger("zklb.discovery")

#: Malformed znodes remembered as reported (to report each version once); forgotten all at once past it.
MAX_MALFORMED_REMEMBERED = 10_000

#: Called with each new snapshot, on the client's zklb worker thread.
MembershipListener = Callable[[Membership], object]

#: Seconds before a sync that failed while connected (e.g. a request timeout) is tried again.
RETRY_DELAY = 1.0


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Child:
    """What the watcher knows of one child znode: the version it read and what it decoded to."""

    mzxid: int
    instance: ServiceInstance | None  # None: malformed or disabled, so not served


class _Watches:
    """The kazoo watch callbacks of one run of a watcher (from one start to its stop).

    A run that stopped (a failed start, a close) may still have a sync in flight that sets watches;
    that run's callbacks are its own objects, so taking them back can never touch the next run's.
    """

    __slots__ = ("generation", "watcher")

    def __init__(self, watcher: ServiceWatcher, generation: int) -> None:
        self.watcher = watcher
        self.generation = generation

    def on_children(self, event: WatchedEvent) -> None:
        if self.generation == self.watcher._generation:
            self.watcher._on_children(event)

    def on_data(self, event: WatchedEvent) -> None:
        if self.generation == self.watcher._generation:
            self.watcher._on_data(event)

    def drop(self, client: KazooClient, path: str) -> None:
        drop_watches(client, path, (self.on_children, self.on_data))


class ServiceWatcher:
    """Watches ``/<root>/<service>`` and publishes its live instances as `Membership` snapshots.

    ``codec`` reads the znodes: ``"curator"`` (default), ``"serverset"``, ``"dubbo"`` (which reads
    ``/<root>/<service>/providers``) or a codec object; an unknown name raises `ConfigurationError`.
    A znode it rejects is left out and its reason logged once (again only if the reason changes).

    ``client`` is a hosts string (the watcher makes, starts and stops its own kazoo client, with
    ``kazoo_options`` such as auth_data or use_ssl; None: the ``ZKLB_HOSTS`` environment variable) or a
    started `KazooClient` (never stopped here); ``root`` None means ``ZKLB_ROOT`` (else ``/services``).
    ``start()`` returns once the first membership is loaded.
    ``request_timeout`` bounds each ZooKeeper request; ``resync_delay`` is the most a re-sync after a
    reconnect is put off (a random share of it); ``rng`` makes that delay repeatable. When every
    instance disappears at once the last pool is kept for ``empty_grace`` seconds (0: never).
    """

    def __init__(
        self,
        client: str | KazooClient | None = None,
        service: str = "",
        *,
        root: str | None = None,
        codec: str | Codec | None = "curator",
        session_timeout: float = 10.0,
        kazoo_options: Mapping[str, Any] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resync_delay: float = 1.0,
        empty_grace: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.service = check_service(service)
        self.root = check_root(root)
        self.codec: Codec = resolve_codec(codec)
        self.path = service_path(self.codec, self.root, self.service)
        self._request_timeout = check_timeout("request_timeout", request_timeout)
        self._resync_delay = check_timeout("resync_delay", resync_delay, zero=True)
        self._empty_grace = check_timeout("empty_grace", empty_grace, zero=True)
        self._held_since: float | None = None  # when ZooKeeper started listing no instance, if held
        self._departing: frozenset[str] = frozenset()  # ids this process removes on purpose
        self._rng = rng if rng is not None else random.Random()
        self._handle = ClientHandle(client, session_timeout=session_timeout, kazoo_options=kazoo_options)
        self._client: KazooClient | None = None
        self._worker: ClientWorker | None = None
        self._state = _State.NEW
        self._state_lock = threading.Lock()
        # Bumped each time the watcher stops following the client: tasks of an older run do nothing.
        self._generation = 0
        self._watches = _Watches(self, 0)
        self._membership = Membership(service=self.service, version=0)
        self._children: dict[str, _Child] = {}
        self._listeners: list[_Subscriber] = []
        # Pending work, written by kazoo's threads and taken by the worker; guarded by _lock.
        self._lock = threading.Lock()
        self._children_dirty = True
        self._rearm = False
        self._data_dirty: set[str] = set()
        self._job: Job | None = None  # the sync of the current run, on the client's worker
        self._loaded = threading.Event()
        self._published = threading.Condition()
        self._reads = 0
        # Child name -> why it is left out, already logged: once per znode and reason, so a re-read
        # after a reconnect, a restart or a change that keeps it rejected says nothing new.
        self._malformed: dict[str, str] = {}
        self._forked = False  # made before a fork on a borrowed client: unusable in this process
        _fork.track(self)

    # -- public API ---------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The latest snapshot (the last known one while ZooKeeper is unreachable)."""
        if self._forked:
            self._handle.check()
        return self._membership

    @property
    def read_count(self) -> int:
        """ZooKeeper read requests (children lists, data, exists) issued so far; for tests and metrics."""
        return self._reads

    @property
    def connection(self) -> Connection:
        """The client's connection to ZooKeeper: ``"connected"``, ``"suspended"`` or ``"lost"``."""
        return connection_state(self._client)

    @property
    def loaded(self) -> bool:
        """True once a first membership has been read from ZooKeeper."""
        return self._loaded.is_set()

    def start(self, timeout: float | None = None) -> Self:
        """Connect if needed, begin watching and return once the first membership is loaded.

        Raises `RegistryError` if ZooKeeper does not answer within ``timeout`` seconds (default: the
        request timeout); the watcher is then left as if never started (no thread, listener or watch
        of it remains) and ``start()`` may be called again.
        """
        timeout = self._request_timeout if timeout is None else timeout
        with self._state_lock:
            if self._state is _State.CLOSED:
                raise ClosedError(f"watcher of {self.path} is closed")
            if self._forked:
                self._handle.check()
            first = self._state is _State.NEW
            if first:
                self._state = _State.STARTING
        if first:
            self._follow(timeout)
        if self._loaded.wait(timeout):
            return self
        if first:
            self._unfollow(reset=True)
        raise RegistryError(f"membership of {self.path} not loaded within {timeout:g} s")

    def add_listener(self, listener: MembershipListener) -> None:
        """Call ``listener(membership)`` on every new snapshot (on the zklb worker thread, not kazoo's).

        If a membership is already loaded the listener is first called with it (on the caller's
        thread), so it starts in sync. Each listener sees strictly growing versions, never an old
        snapshot after a newer one. Raises `ClosedError` once the watcher is closed.
        """
        subscriber = _Subscriber(listener)
        with self._state_lock:
            if self._state is _State.CLOSED:
                raise ClosedError(f"watcher of {self.path} is closed")
            if self._forked:
                self._handle.check()
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
        if self._forked:
            self._handle.check()
        deadline = time.monotonic() + timeout
        with self._published:
            while not predicate(self._membership):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._published.wait(remaining)
            return True

    def close(self) -> None:
        """Stop watching and remove every callback put on the client. Idempotent; never reopens.

        The kazoo client is stopped only if the watcher created it.
        """
        with self._state_lock:
            if self._state is _State.CLOSED:
                return
            following = self._state is not _State.NEW
            self._state = _State.CLOSED
        with self._lock:
            self._listeners = []
        if following:
            self._unfollow(reset=False)
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

    # -- following the client ---------------------------------------------------------------------------

    def _follow(self, timeout: float) -> None:
        """Attach to the client's worker and schedule the first sync (the STARTING half of start)."""
        try:
            client = self._handle.get(timeout)
        except BaseException:
            with self._state_lock:
                if self._state is _State.STARTING:
                    self._state = _State.NEW
            raise
        self._attach(client)

    def _attach(self, client: KazooClient) -> None:
        """Follow ``client`` (connected or not: a sync waits for CONNECTED) from its worker thread."""
        worker = ClientWorker.attach(client)
        with self._state_lock:
            if self._state is _State.CLOSED:  # closed while connecting
                worker.detach(self._request_timeout)
                raise ClosedError(f"watcher of {self.path} is closed")
            self._client, self._worker = client, worker
            generation = self._generation
            self._watches = _Watches(self, generation)
            self._job = Job(worker, lambda: self._step(generation))
            self._state = _State.STARTED
            with self._lock:
                # Read everything afresh: what an earlier, failed start read is not watched any more.
                self._children = {}
                self._children_dirty, self._rearm = True, True
            worker.subscribe(self._on_state, service=self.service)
            self._schedule(0.0)

    def _unfollow(self, *, reset: bool) -> None:
        """Undo `_follow`: no listener, timer, kazoo watch or worker use of this watcher remains."""
        with self._state_lock:
            self._generation += 1
            worker, client, watches = self._worker, self._client, self._watches
            self._worker = None
            if reset and self._state is not _State.CLOSED:
                self._state = _State.NEW
            with self._lock:
                job, self._job = self._job, None
                self._children = {}
                self._children_dirty, self._rearm, self._data_dirty = True, False, set()
                self._held_since = None
        if job is not None:
            job.cancel()
        if worker is not None:
            worker.unsubscribe(self._on_state)
        if client is not None:
            watches.drop(client, self.path)
        if worker is not None:
            # A failed start does not wait for a sync still running there: it is told to stop.
            worker.detach(0.0 if reset else self._request_timeout)
        if reset:
            self._loaded.clear()
            self._handle.reset()
            self._client = None

    def _after_fork_in_child(self) -> _fork.Resume | None:
        """Keep the last membership; follow a new session of an owned client, never the parent's."""
        self._state_lock = threading.Lock()
        self._lock = threading.Lock()
        self._published = threading.Condition()
        loaded = self._loaded.is_set()
        self._loaded = threading.Event()
        if loaded:
            self._loaded.set()
        for subscriber in self._listeners:
            subscriber._lock = threading.Lock()
        # What the parent's worker would have run belongs to the parent: a new generation, no worker.
        self._generation += 1
        self._client = self._worker = self._job = None
        self._children = {}
        self._children_dirty, self._rearm, self._data_dirty = True, False, set()
        self._held_since = None
        if self._state is _State.STARTING or (self._state is _State.STARTED and not loaded):
            self._state = _State.NEW  # a start in progress: the thread running it is not in this process
        elif self._state is _State.STARTED:
            if self._handle.reconnects_after_fork:
                return self._resume
            self._forked = True
        return None

    def _resume(self) -> None:
        """After a fork: follow a new client (connecting in the background) from the last membership."""
        with self._state_lock:
            if self._state is not _State.STARTED or self._worker is not None:
                return
        try:
            client = self._handle.get_nowait()
        except ZklbError:  # closed meanwhile
            return
        log.info("%s: following a new ZooKeeper session after fork", self.path)
        self._attach(client)

    def _schedule(self, delay: float) -> None:
        """Run a sync on the worker after ``delay`` seconds (now if 0), coalescing with one pending."""
        job = self._job
        if job is not None:
            job.request(delay)

    # -- kazoo callbacks: record and schedule, nothing else -------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            with self._lock:
                # kazoo forgot every watch when the connection dropped: re-arm them all.
                self._rearm = True
                self._children_dirty = True
            # Spread re-syncs out; the first load does not wait.
            self._schedule(self._rng.uniform(0.0, self._resync_delay) if self._loaded.is_set() else 0.0)

    def _on_children(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is not _State.STARTED:
            return  # connection-state notice; the CONNECTED listener handles recovery
        with self._lock:
            self._children_dirty = True
        self._schedule(0.0)

    def _on_data(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is not _State.STARTED:
            return
        with self._lock:
            if event.path == self.path:
                self._children_dirty = True  # the service path itself appeared or went away
            elif event.type == EventType.CHANGED:
                self._data_dirty.add(event.path.rsplit("/", 1)[-1])
            else:
                # Deleted: it may be back (same name) before the list is read; read it too, so that a
                # re-created child is seen and watched again.
                self._children_dirty = True
                self._data_dirty.add(event.path.rsplit("/", 1)[-1])
        self._schedule(0.0)

    # -- the sync, on the worker thread -----------------------------------------------------------------

    def _step(self, generation: int) -> None:
        client = self._client
        watches = self._watches
        if generation != watches.generation or self._state is not _State.STARTED or client is None:
            return
        if not client.connected:
            return  # the CONNECTED listener schedules the next sync
        with self._lock:
            children_dirty, self._children_dirty = self._children_dirty, False
            rearm, self._rearm = self._rearm, False
            data_dirty, self._data_dirty = self._data_dirty, set()
        if not (children_dirty or rearm or data_dirty):
            return
        try:
            self._sync(client, watches, children_dirty or rearm, rearm, data_dirty)
        except (KazooException, *TRANSIENT_ERRORS) as exc:
            # Keep the work for later; the last membership stays published meanwhile.
            log.info("membership sync of %s deferred: %r", self.path, exc)
            with self._lock:
                self._children_dirty = True
                self._rearm = self._rearm or rearm
                self._data_dirty |= data_dirty
            if client.connected:
                # Connected but failing (e.g. a timeout): try again shortly rather than wait forever.
                self._schedule(RETRY_DELAY * (0.5 + self._rng.random()))
        except Exception:  # a bug here must not stop the updates of this or any other watcher
            log.exception("unexpected error syncing membership of %s", self.path)
        if generation != self._generation:
            # Stopped following while this sync ran: take back the watches it may have set.
            watches.drop(client, self.path)

    def _read(self, count: int = 1) -> None:
        self._reads += count

    def _sync(
        self, client: KazooClient, watches: _Watches, list_children: bool, rearm: bool, data_dirty: set[str]
    ) -> None:
        known = self._children
        changed = False
        to_read: set[str] = set()
        if list_children:
            current = set(self._list_children(client, watches) or ())
            removed = known.keys() - current
            for name in removed:
                self._malformed.pop(name, None)
            if removed:
                known = {name: child for name, child in known.items() if name in current}
                changed = True
            to_read = current - known.keys()
            if rearm:
                to_read |= self._moved_since_read(client, watches, known)
        to_read |= data_dirty & known.keys()
        if to_read:
            known = dict(known)
            changed |= self._read_children(client, watches, to_read, known)
        if watches.generation != self._generation:
            return  # stopped following while reading: what was read belongs to no one now
        if changed:
            self._children = known
        if not (changed or self._held_since is not None or not self._loaded.is_set()):
            return
        instances = tuple(c.instance for c in known.values() if c.instance is not None)
        if self._hold_last_pool(instances):
            return
        self._held_since = None
        if self._departing:  # those gone now need no more remembering
            with self._lock:
                self._departing = frozenset(k for k in self._departing if k in known)
        self._publish(instances)

    def _hold_last_pool(self, instances: tuple[ServiceInstance, ...]) -> bool:
        """Whether to keep publishing the last pool rather than ``instances``, what ZooKeeper now lists.

        Every instance gone at once is far more often one registrar's session expiring (its servers
        still up, their znodes re-created one by one within a second) than a whole service stopping.
        So when the pool would become empty, the last one is kept for ``empty_grace`` seconds, and
        while only some of it has come back (a strict subset, nothing new), it is still kept: a pool
        of one returning instance would take the whole load. When all are back, a new one appears,
        or the grace is over, what ZooKeeper lists is published.
        """
        held = self._membership.by_id
        if self._held_since is None:
            if instances or not held or self._empty_grace <= 0 or not self._loaded.is_set():
                return False
            if held.keys() <= self._departing:  # every one of them was removed on purpose, here
                self._departing -= held.keys()
                return False
            self._held_since = time.monotonic()
            log.warning(
                "every instance of %s left at once; keeping the last %d for %g s in case they come back",
                self.path,
                len(held),
                self._empty_grace,
            )
        elif not {inst.id for inst in instances} < held.keys():
            return False
        remaining = self._held_since + self._empty_grace - time.monotonic()
        if remaining <= 0:
            return False
        worker = self._worker
        if worker is not None:
            generation = self._generation
            worker.call_later(remaining, lambda: self._recheck(generation))
        return True

    def _expect_departure(self, instance_id: str) -> None:
        """This process is removing ``instance_id`` on purpose: its going is not a blip to ride out."""
        with self._lock:
            self._departing = self._departing | {instance_id}

    def _recheck(self, generation: int) -> None:
        if generation != self._generation:
            return
        with self._lock:
            self._children_dirty = True
        self._schedule(0.0)

    def _list_children(self, client: KazooClient, watches: _Watches) -> list[str] | None:
        """The children of the service path, with a watch; None (and an exists watch) if it is absent."""
        timeout = self._request_timeout
        path = self.path
        while True:
            try:
                self._read()
                names: list[str] = bounded_retry(
                    lambda: client.get_children_async(path, watch=watches.on_children).get(timeout=timeout),
                    deadline=timeout,
                )
                return names
            except NoNodeError:
                pass
            self._read()
            stat = bounded_retry(
                lambda: client.exists_async(path, watch=watches.on_data).get(timeout=timeout),
                deadline=timeout,
            )
            if stat is None:
                return None
            # Created between the two calls: list it now.

    def _moved_since_read(self, client: KazooClient, watches: _Watches, known: dict[str, _Child]) -> set[str]:
        """Re-arm data watches on every known child; return those whose data moved while unwatched."""
        pending = {name: client.exists_async(f"{self.path}/{name}", watch=watches.on_data) for name in known}
        self._read(len(pending))
        moved = set()
        for name, result in pending.items():
            stat = result.get(timeout=self._request_timeout)
            if stat is None or stat.mzxid != known[name].mzxid:
                moved.add(name)
        return moved

    def _read_children(
        self, client: KazooClient, watches: _Watches, names: set[str], known: dict[str, _Child]
    ) -> bool:
        """Read ``names`` pipelined (one get_async each, re-arming data watches) into ``known``."""
        # Sorted, so that `known` stays nearly in id order and each snapshot's sort is close to O(n).
        pending: dict[str, Any] = {
            name: client.get_async(f"{self.path}/{name}", watch=watches.on_data) for name in sorted(names)
        }
        self._read(len(pending))
        changed = False
        for name, result in pending.items():
            try:
                data, stat = result.get(timeout=self._request_timeout)
            except NoNodeError:
                changed |= known.pop(name, None) is not None
                continue
            previous = known.get(name)
            if previous is not None and previous.mzxid == stat.mzxid:
                continue
            known[name] = _Child(stat.mzxid, self._decode(name, data, stat.mzxid))
            changed = True
        return changed

    def _decode(self, name: str, data: bytes, mzxid: int) -> ServiceInstance | None:
        try:
            instance = self.codec.decode(self.service, name, data)
        except InstanceSkipped as exc:
            self._reject(name, logging.INFO, f"not serving {self.path}/{name}: {exc}")
        except InvalidInstance as exc:
            self._reject(name, logging.WARNING, f"skipping malformed instance {self.path}/{name}: {exc}")
        except Exception as exc:  # a codec bug must not stop the watcher either
            reason = f"skipping instance {self.path}/{name}: codec failed: {exc!r}"
            self._reject(name, logging.WARNING, reason)
        else:
            if instance is None:
                self._reject(name, logging.INFO, f"not serving {self.path}/{name}: disabled")
            else:
                self._malformed.pop(name, None)
            return instance
        return None

    def _reject(self, name: str, level: int, message: str) -> None:
        """Log why ``name`` is left out, once per znode and reason (a watch firing again says nothing new)."""
        if self._malformed.get(name) != message:
            if len(self._malformed) >= MAX_MALFORMED_REMEMBERED:
                self._malformed.clear()
            self._malformed[name] = message
            log.log(level, "%s", message)

    def _publish(self, instances: tuple[ServiceInstance, ...]) -> None:
        try:
            membership = Membership(self.service, self._membership.version + 1, instances)
        except ValueError as exc:  # two znodes claiming one id cannot happen with id == name, but be safe
            log.warning("membership of %s not published: %s", self.path, exc)
            return
        with self._published:
            previous, self._membership = self._membership, membership
            self._published.notify_all()
        if self._loaded.is_set():
            change = describe_change(previous, membership)
            if change is not None:
                log.info("%s: %s (now %d instances)", self.path, change, len(membership))
        else:
            log.debug("%s: loaded %d instances", self.path, len(membership))
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
