"""`MembershipSync`: the engine under `zklb.discovery.ServiceWatcher` that keeps its membership in sync.

Private. kazoo's watch callbacks and state listener only record *what* changed (children list, one
child's data, the session) under a short lock and schedule a sync on the client's zklb worker thread
(`zklb._worker`); the sync reads only what changed (`zklb._children`), asks `zklb._grace` whether to
hold the last pool, and publishes the next snapshot (`zklb._publisher`). A sync that fails while
connected is tried again after ``RETRY_DELAY`` (jittered); after a reconnect, after a random share of
``resync_delay``. Each run of the watcher (one start to its stop) is a *generation*: the watches,
job and timers of an older one do nothing.
"""

from __future__ import annotations

import enum
import logging
import random
import threading

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.protocol.states import EventType, WatchedEvent

from zklb._children import Child, ChildReader, instance_changes, leaving_alone
from zklb._grace import EmptyGrace
from zklb._publisher import MembershipPublisher
from zklb._rewatch import Rewatcher, WatchSet
from zklb._worker import ClientWorker, Job
from zklb._zk import TRANSIENT_ERRORS, drop_watches
from zklb.codecs import Codec
from zklb.membership import Membership

__all__ = ["RETRY_DELAY", "MembershipSync", "RunWatches", "WatcherState"]

log = logging.getLogger("zklb.discovery")

#: Seconds before a sync that failed while connected (e.g. a request timeout) is tried again.
RETRY_DELAY = 1.0


class WatcherState(enum.Enum):
    """Where a watcher is in its life: new, starting, started (following a client), closed."""

    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    CLOSED = "closed"


class RunWatches:
    """The kazoo watch callbacks of one run of a watcher (from one start to its stop).

    A run that stopped (a failed start, a close) may still have a sync in flight that sets watches;
    that run's callbacks are its own objects, so taking them back can never touch the next run's.
    """

    __slots__ = ("generation", "watcher")

    def __init__(self, watcher: MembershipSync, generation: int) -> None:
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


class MembershipSync:
    """The sync state of one service path and the steps that update it, run on the client's worker."""

    def __init__(
        self,
        service: str,
        path: str,
        codec: Codec,
        *,
        request_timeout: float,
        resync_delay: float,
        empty_grace: float,
        rng: random.Random,
    ) -> None:
        self.service = service
        self.path = path
        self.codec = codec
        self._request_timeout = request_timeout
        self._resync_delay = resync_delay
        self._grace = EmptyGrace(path, empty_grace)
        self._rng = rng
        self._client: KazooClient | None = None
        self._worker: ClientWorker | None = None
        self._state = WatcherState.NEW
        # Bumped each time the watcher stops following the client: tasks of an older run do nothing.
        self._generation = 0
        self._watches = RunWatches(self, 0)
        self._snapshots = MembershipPublisher(service, path)
        self._reader = ChildReader(service, path, codec, request_timeout)
        self._children: dict[str, Child] = {}
        # Pending work, written by kazoo's threads and taken by the worker; guarded by _lock.
        self._lock = threading.Lock()
        self._children_dirty = True
        self._rearm = False
        self._data_dirty: set[str] = set()
        self._deleted: set[str] = set()  # children a data watch saw deleted: applied before any read
        # The children the current snapshot was built from, and that snapshot: while both are current,
        # the next one is derived from the changed children alone (O(changes), not O(n)).
        self._basis: tuple[dict[str, Child], Membership] | None = None
        self._job: Job | None = None  # the sync of the current run, on the client's worker
        # Re-arms this run's watches with SetWatches after a reconnect (None: kazoo not as expected).
        self._rewatcher: Rewatcher | None = None
        self._watch_set: WatchSet | None = None

    def _schedule(self, delay: float) -> None:
        """Run a sync on the worker after ``delay`` seconds (now if 0), coalescing with one pending."""
        job = self._job
        if job is not None:
            job.request(delay)

    # -- kazoo callbacks: record and schedule, nothing else -------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            rewatcher, watch_set = self._rewatcher, self._watch_set
            if rewatcher is not None and watch_set is not None and rewatcher.resumed(watch_set):
                # Same session: SetWatches re-arms every watch and the server's events say what changed
                # meanwhile. Only work left pending by a sync the drop interrupted remains to be done.
                self._schedule(self._rng.uniform(0.0, self._resync_delay))
                return
            self._resync_all()

    def _resync_all(self) -> None:
        with self._lock:
            # kazoo forgot every watch when the connection dropped: re-arm them all.
            self._rearm = True
            self._children_dirty = True
        # Spread re-syncs out; the first load does not wait.
        self._schedule(self._rng.uniform(0.0, self._resync_delay) if self._snapshots.loaded.is_set() else 0.0)

    def _rewatch_failed(self, generation: int) -> None:
        """The SetWatches that re-armed this run's watches failed: re-read everything, as without it."""
        if generation == self._generation and self._state is WatcherState.STARTED:
            self._resync_all()

    def _join_rewatch(self, client: KazooClient, worker: ClientWorker, generation: int) -> None:
        """Have the client's `Rewatcher` re-arm this run's watches after each reconnect of the session."""
        rewatcher = Rewatcher.attach(client, worker)
        if rewatcher is not None:
            watches = self._watches
            watch_set = WatchSet(
                watches.on_children, watches.on_data, self.path, lambda: self._rewatch_failed(generation)
            )
            rewatcher.add(watch_set)
            self._watch_set = watch_set
        self._rewatcher = rewatcher

    def _leave_rewatch(self) -> None:
        """Undo `_join_rewatch` (before the run's callbacks are taken back from the client)."""
        rewatcher, watch_set = self._rewatcher, self._watch_set
        self._rewatcher = self._watch_set = None
        if rewatcher is not None:
            if watch_set is not None:
                rewatcher.remove(watch_set)
            rewatcher.detach()

    def _on_children(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is not WatcherState.STARTED:
            return  # connection-state notice; the CONNECTED listener handles recovery
        with self._lock:
            self._children_dirty = True
        self._schedule(0.0)

    def _on_data(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._state is not WatcherState.STARTED:
            return
        with self._lock:
            if event.path == self.path:
                self._children_dirty = True  # the service path itself appeared or went away
            elif event.type == EventType.CHANGED:
                self._data_dirty.add(event.path.rsplit("/", 1)[-1])
            else:
                # Deleted (or created, after an exists): it may be back (same name) before the list is
                # read; read it too, so that a re-created child is seen and watched again.
                name = event.path.rsplit("/", 1)[-1]
                self._data_dirty.add(name)
                if event.type == EventType.DELETED:
                    # The sync lists the children unless it serves the deletion at once; then the
                    # children watch, which the same deletion fires, asks for the list (one, not two).
                    self._deleted.add(name)
                else:
                    self._children_dirty = True
        self._schedule(0.0)

    # -- the sync, on the worker thread -----------------------------------------------------------------

    def _step(self, generation: int) -> None:
        client = self._client
        watches = self._watches
        if generation != watches.generation or self._state is not WatcherState.STARTED or client is None:
            return
        if not client.connected:
            return  # the CONNECTED listener schedules the next sync
        with self._lock:
            children_dirty, self._children_dirty = self._children_dirty, False
            rearm, self._rearm = self._rearm, False
            data_dirty, self._data_dirty = self._data_dirty, set()
            deleted, self._deleted = self._deleted, set()
        if not (children_dirty or rearm or data_dirty or deleted):
            return
        try:
            self._sync(client, watches, children_dirty or rearm, rearm, data_dirty, deleted=deleted)
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

    def _sync(
        self,
        client: KazooClient,
        watches: RunWatches,
        list_children: bool,
        rearm: bool,
        data_dirty: set[str],
        *,
        deleted: set[str],
    ) -> None:
        known = self._children
        gone = deleted & known.keys()
        if not gone or not leaving_alone(known, gone):
            list_children = list_children or bool(deleted)  # the list says who is left, all at once
        else:
            # ZooKeeper said these are deleted: a leave is published before any round trip (the list
            # read the children watch asks for re-arms it, and sees a child re-created meanwhile).
            before, known = known, dict(known)
            for name in gone:
                del known[name]
                self._reader.forget(name)
            self._children = known
            self._publish(before, known, gone)
        before = known
        touched: set[str] = set()
        to_read: set[str] = set()
        if list_children:
            # The names added or removed, in one C-level pass over each side (O(n) hashing of the
            # list is the least a children list costs; two set differences would double it).
            moved = set(self._reader.list_children(client, watches.on_children, watches.on_data) or ())
            moved.symmetric_difference_update(known)
            removed = {name for name in moved if name in known}
            for name in removed:
                self._reader.forget(name)
            if removed:
                known = dict(known)
                for name in removed:
                    del known[name]
                touched |= removed
            to_read = moved - removed
            if rearm:
                to_read |= self._reader.moved_since_read(client, watches.on_data, known)
        to_read |= data_dirty & known.keys()
        if to_read:
            known = dict(known)
            touched |= self._reader.read(client, watches.on_data, to_read, known)
        if watches.generation != self._generation:
            return  # stopped following while reading: what was read belongs to no one now
        if touched:
            self._children = known
        if touched or self._grace.held_since is not None or not self._snapshots.loaded.is_set():
            self._publish(before, known, touched)

    def _publish(self, before: dict[str, Child], known: dict[str, Child], touched: set[str]) -> None:
        """Publish the snapshot of ``known`` (the ``touched`` children of ``before`` changed), unless
        the empty-pool grace holds the last one."""
        loaded = self._snapshots.loaded.is_set()
        published = self._snapshots.membership
        membership = None
        if loaded and self._basis is not None and self._basis[0] is before and self._basis[1] is published:
            changes = instance_changes(before, known, touched, published.by_id)
            if changes is not None:
                membership = self._snapshots.derived(*changes)
        if membership is None:
            membership = self._snapshots.successor(
                tuple(c.instance for c in known.values() if c.instance is not None)
            )
            if membership is None:  # refused (duplicate ids): logged; the last snapshot stays
                self._basis = None
                return
        with self._lock:  # hold() may take ids out of `departing`, which a balancer's thread adds to
            remaining = self._grace.hold(published.by_id, membership.instances, loaded=loaded)
        if remaining is not None:
            self._basis = None
            worker = self._worker
            if worker is not None:  # look again when the grace is over
                generation = self._generation
                worker.call_later(remaining, lambda: self._recheck(generation))
            return
        self._grace.end()
        if self._grace.departing:
            with self._lock:
                self._grace.keep_departing(known)
        self._basis = (known, membership)
        self._snapshots.publish(membership)

    def _expect_departure(self, instance_id: str) -> None:
        """This process is removing ``instance_id`` on purpose: its going is not a blip to ride out."""
        with self._lock:
            self._grace.expect_departure(instance_id)

    def _recheck(self, generation: int) -> None:
        if generation != self._generation:
            return
        with self._lock:
            self._children_dirty = True
        self._schedule(0.0)
