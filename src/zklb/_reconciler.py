"""`Reconciler`: a registry's desired state and the passes that make ZooKeeper match it.

Private: `zklb.registry.Registry` is its public face (see that module's rules). This module keeps the
state (registrations held, tombstones, orphans of sequential creates) under one condition, notified
after every pass, and runs the passes on the client's zklb worker thread (`zklb._worker`): after each
reconnect, after each change, and after a failure on a timer with backoff and jitter. kazoo's state
listener and watch callbacks only schedule a pass. What a pass does in ZooKeeper for one entry is
`zklb._reconcile_entry`.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.protocol.states import EventType, WatchedEvent
from kazoo.security import ACL

from zklb import _fork
from zklb._acl import Refused
from zklb._client import ClientHandle
from zklb._reconcile_entry import Conflict, EntryReconciler
from zklb._worker import ClientWorker, Job
from zklb._zk import TRANSIENT_ERRORS, drop_watches, session_id
from zklb.errors import ClosedError
from zklb.registration import Registration

__all__ = ["MAX_BACKOFF", "Reconciler"]

log = logging.getLogger("zklb.registry")

#: Longest wait between two reconcile attempts while ZooKeeper keeps failing a request.
MAX_BACKOFF = 5.0

#: A sequential registration given up while a create of its may have landed unseen: (znode name
#: prefix, data, session); a pass deletes that session's znodes with that data nobody holds.
Orphan = tuple[str, frozenset[bytes], int]  # prefix, data its lost creates sent, session


class Reconciler:
    """Desired registrations and tombstones, reconciled with ZooKeeper by passes on the client's worker."""

    def __init__(
        self,
        handle: ClientHandle,
        *,
        root: str,
        acl: tuple[ACL, ...] | None,
        request_timeout: float,
        rng: random.Random,
    ) -> None:
        self.root = root
        self._handle = handle
        self._acl = acl
        self._request_timeout = request_timeout
        self._rng = rng
        self._cond = threading.Condition(threading.Lock())  # guards the state below; notified per pass
        self._desired: dict[str, Registration] = {}
        # Path -> the session that may own a znode there (None: whichever session comes next).
        self._tombstones: dict[str, int | None] = {}
        self._orphans: list[Orphan] = []
        self._conflicts: dict[str, int] = {}  # path -> foreign owner already logged
        self._client: KazooClient | None = None
        self._worker: ClientWorker | None = None
        self._job: Job | None = None  # the reconcile pass, on the client's worker
        self._failures = 0
        self._closed = False
        self._start_lock = threading.Lock()
        _fork.track(self)

    # -- desired state ------------------------------------------------------------------------------

    def _bury_locked(self, registration: Registration, session: int | None) -> str:
        """Tombstone what ``registration`` may have in ZooKeeper (under ``_cond``); returns its path."""
        path = registration.path
        if not registration.sequential:
            self._tombstones[path] = session
            return path
        if registration._path is not None:
            self._tombstones[path] = session
        uncertain = registration._uncertain
        if uncertain is not None and uncertain[0] == session:
            self._orphans.append((registration.prefix, uncertain[1], session))
        worker = self._worker
        if worker is not None:  # the key names no znode: nothing in ZooKeeper waits on it
            worker.release(registration.key, self)
        return path

    def still_desired(self, registration: Registration) -> bool:
        """Whether ``registration`` is still held (`DesiredState` for the entry operations)."""
        with self._cond:
            return self._desired.get(registration.key) is registration

    def held_paths(self) -> set[str | None]:
        """The znodes the held (sequential) registrations own now."""
        with self._cond:
            return {r._path for r in self._desired.values()}

    def created_unwanted(self, registration: Registration, path: str, session: int) -> bool:
        """A create made ``path`` for ``registration``: True, and ``path`` tombstoned, if it was given up."""
        with self._cond:
            if self._desired.get(registration.key) is not registration:
                self._tombstones[path] = session
                return True
            return False

    # -- lifecycle ------------------------------------------------------------------------------------

    def _ensure_started(self, timeout: float) -> None:
        if self._closed:
            raise ClosedError("registry is closed")
        if self._worker is not None:
            return
        client = self._handle.get(timeout)  # outside the lock: concurrent callers share one connect
        with self._start_lock:
            if self._closed:
                raise ClosedError("registry is closed")
            if self._worker is not None:
                return
            worker = ClientWorker.attach(client)
            self._client, self._worker = client, worker
            self._job = Job(worker, self._reconcile)
            worker.subscribe(self._on_state)

    def _after_fork_in_child(self) -> None:
        """The registrations so far are the parent's: forget them, touching nothing in ZooKeeper.

        New ones are made on a new session (owned client) or raise `ForkError` (borrowed client).
        """
        self._cond = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        for registration in self._desired.values():
            registration._after_fork_in_child()
        self._desired.clear()
        self._tombstones.clear()
        self._conflicts.clear()
        self._client = self._worker = self._job = None
        self._failures = 0

    def _retire(self) -> None:
        """Leave the client's worker: after close, once nothing is left to delete."""
        with self._cond:
            worker, self._worker = self._worker, None
            job, self._job = self._job, None
        if job is not None:
            job.cancel()
        client = self._client
        if client is not None:
            drop_watches(client, self.root, (self._on_znode,))
        if worker is not None:
            worker.release_all(self)
            worker.unsubscribe(self._on_state)
            worker.detach(self._request_timeout)

    def _session(self) -> int | None:
        client = self._client
        return None if client is None else session_id(client)

    def _wait(self, done: Callable[[], object], timeout: float) -> bool:
        """Wait until ``done()`` holds (checked after each pass); a pass runs inline on the worker thread."""
        worker = self._worker
        if worker is not None and worker.on_worker_thread():
            self._reconcile()  # called from a zklb listener: waiting for the worker would wait for ourselves
            return bool(done())
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- scheduling -----------------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        # On kazoo's thread: schedule only. Every reconnect re-checks the znodes (after an expiry they
        # are gone and must be re-created; after a plain reconnect, queued requests may have landed).
        if state == KazooState.CONNECTED:
            with self._cond:
                # kazoo dropped our watches with the connection: look at every znode again (one read
                # each), which re-arms them and puts back any that went while we could not see.
                for registration in self._desired.values():
                    registration._applied = None
            self._schedule(0.0)
        elif state == KazooState.LOST and self._closed:
            with self._cond:
                self._tombstones.clear()  # the session is over: its ephemeral znodes went with it
                self._orphans.clear()
                self._cond.notify_all()
            worker = self._worker
            if worker is not None:
                worker.call_soon(self._retire)

    def _on_znode(self, event: WatchedEvent) -> None:
        # On kazoo's thread: a registration's znode (or a foreign one in its way) changed or went.
        if event.type == EventType.NONE:
            return
        with self._cond:
            registration = self._desired.get(event.path)
            if registration is None:  # a sequential one is found by the znode it holds now
                registration = next((r for r in self._desired.values() if r._path == event.path), None)
            if registration is None:
                return
            registration._applied = None
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        job = self._job
        if job is not None:
            job.request(delay)

    # -- the reconcile pass, on the worker thread -----------------------------------------------------

    def _reconcile(self) -> None:
        client = self._client
        if client is None or not client.connected:
            return  # the next CONNECTED schedules a pass
        session = session_id(client)
        if session is None:
            return
        with self._cond:
            # Tombstones of an earlier session are moot: that session's znodes died with it.
            for path in [p for p, s in self._tombstones.items() if s is not None and s != session]:
                del self._tombstones[path]
                if path not in self._desired and self._worker is not None:
                    self._worker.release(path, self)
            tombstones = list(self._tombstones)
            self._orphans = [o for o in self._orphans if o[2] == session]
            orphans = list(self._orphans)
            pending = [r for r in self._desired.values() if r._applied != (session, r._data)]
        entries = EntryReconciler(
            client,
            session,
            timeout=self._request_timeout,
            acl=self._acl,
            watch=self._on_znode,
            desired=self,
            conflicts=self._conflicts,
        )
        ok = True
        for path in tombstones:
            ok &= self._attempt(path, functools.partial(self._delete, entries, path), None)
        for orphan in orphans:
            ok &= self._attempt(orphan[0], functools.partial(self._sweep, entries, orphan), None)
        for registration in pending:
            data = registration._data
            ensure = functools.partial(entries.ensure, registration, data)
            done = self._attempt(registration.path, ensure, registration)
            if done:
                with self._cond:
                    registration._applied = (session, data)
                    registration._error = None
            ok &= done
        with self._cond:
            self._cond.notify_all()
            idle = self._closed and not self._tombstones and not self._orphans
            self._failures = 0 if ok else self._failures + 1
            failures = self._failures
        if idle:
            self._retire()
        elif not ok and client.connected:
            backoff = min(MAX_BACKOFF, 0.05 * 2 ** min(failures, 16))
            self._schedule(backoff * (0.5 + self._rng.random()))

    def _attempt(self, path: str, action: Callable[[], object], registration: Registration | None) -> bool:
        """Run one ZooKeeper action of a pass; False (and the reason noted) if it must be retried."""
        try:
            action()
            return True
        except Conflict as conflict:
            error = str(conflict)
        except Refused as refused:
            error = str(refused)
            if registration is not None and not registration._refused:
                registration._refused = True
                log.error("registry: %s", error)
        except (KazooException, *TRANSIENT_ERRORS) as exc:
            error = repr(exc)
            log.info("registry: %s not reconciled yet: %s", path, error)
        except Exception as exc:  # a bug must not stop the passes that keep registrations alive
            error = repr(exc)
            log.exception("registry: unexpected error reconciling %s", path)
        if registration is not None:
            registration._error = error
        return False

    def _delete(self, entries: EntryReconciler, path: str) -> None:
        """Delete a tombstoned ``path`` if it is ours, then drop the tombstone (unless re-buried since)."""
        entries.delete_if_ours(path)
        session = entries.session
        with self._cond:
            if self._tombstones.get(path, session) in (None, session):
                self._tombstones.pop(path, None)
                worker = self._worker
                if worker is not None and path not in self._desired:
                    worker.release(path, self)

    def _sweep(self, entries: EntryReconciler, orphan: Orphan) -> None:
        """Delete what an orphaned sequential create may have made, then forget the orphan."""
        prefix, data, _ = orphan
        entries.sweep_orphans(prefix, data)
        with self._cond:
            if orphan in self._orphans:
                self._orphans.remove(orphan)
