"""`ServiceWatcher`: live membership of one service, read incrementally from ZooKeeper.

Rules of this module:

- kazoo's watch callbacks and state listener only record *what* changed (children list, one child's
  data, the session) under a short lock and schedule a sync on the client's zklb worker thread
  (`zklb._worker`), shared by every watcher on that client; all reads happen there.
- A change costs reads for the changed znodes only: the children list (one read) when children come or
  go, then one pipelined ``get_async`` per added child or per child whose data watch fired.
- kazoo drops every watch when the connection drops. When the same session comes back, one
  ``SetWatches`` per client re-arms them and the server fires what changed meanwhile
  (`zklb._rewatch`): O(1) requests, not one per instance. After a new session (or if that request
  fails) the watcher waits a random delay in ``[0, resync_delay]`` (so that a fleet of clients does not
  hit the ensemble in one burst), then re-arms them with one pipelined ``exists`` per known child and
  re-reads only the children whose ``mzxid`` moved.
- While the session is SUSPENDED or LOST the last known membership stays published; nothing is
  cleared because ZooKeeper is away.
- ``start()`` is all or nothing: if the first membership is not loaded in time it undoes everything
  (worker, state listener, kazoo watches, an owned client) and may be called again. ``close()`` removes
  every callback the watcher put on the client; nothing revives a closed watcher.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from kazoo.client import KazooClient

from zklb import _fork
from zklb._client import ClientHandle
from zklb._membership_sync import MembershipSync, RunWatches, WatcherState
from zklb._publisher import MembershipListener
from zklb._worker import ClientWorker, Job
from zklb._zk import (
    DEFAULT_REQUEST_TIMEOUT,
    check_root,
    check_service,
    check_timeout,
    connection_state,
)
from zklb.codecs import Codec, resolve_codec, service_path
from zklb.errors import ClosedError, RegistryError, ZklbError
from zklb.health import Connection
from zklb.membership import Membership

__all__ = ["MembershipListener", "ServiceWatcher"]  # the first re-exported from zklb._publisher

log = logging.getLogger("zklb.discovery")


class ServiceWatcher(MembershipSync):
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
        service = check_service(service)
        root = check_root(root)
        resolved: Codec = resolve_codec(codec)
        super().__init__(
            service,
            service_path(resolved, root, service),
            resolved,
            request_timeout=check_timeout("request_timeout", request_timeout),
            resync_delay=check_timeout("resync_delay", resync_delay, zero=True),
            empty_grace=check_timeout("empty_grace", empty_grace, zero=True),
            rng=rng if rng is not None else random.Random(),
        )
        self.root = root
        self._handle = ClientHandle(client, session_timeout=session_timeout, kazoo_options=kazoo_options)
        self._state_lock = threading.Lock()
        self._forked = False  # made before a fork on a borrowed client: unusable in this process
        _fork.track(self)

    # -- public API ---------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The latest snapshot (the last known one while ZooKeeper is unreachable)."""
        if self._forked:
            self._handle.check()
        return self._snapshots.membership

    @property
    def read_count(self) -> int:
        """ZooKeeper read requests (children lists, data, exists) issued so far; for tests and metrics."""
        return self._reader.reads

    @property
    def connection(self) -> Connection:
        """The client's connection to ZooKeeper: ``"connected"``, ``"suspended"`` or ``"lost"``."""
        return connection_state(self._client)

    @property
    def loaded(self) -> bool:
        """True once a first membership has been read from ZooKeeper."""
        return self._snapshots.loaded.is_set()

    def start(self, timeout: float | None = None) -> Self:
        """Connect if needed, begin watching and return once the first membership is loaded.

        Raises `RegistryError` if ZooKeeper does not answer within ``timeout`` seconds (default: the
        request timeout); the watcher is then left as if never started (no thread, listener or watch
        of it remains) and ``start()`` may be called again.
        """
        timeout = self._request_timeout if timeout is None else check_timeout("timeout", timeout)
        with self._state_lock:
            if self._state is WatcherState.CLOSED:
                raise ClosedError(f"watcher of {self.path} is closed")
            if self._forked:
                self._handle.check()
            first = self._state is WatcherState.NEW
            if first:
                self._state = WatcherState.STARTING
        if first:
            self._follow(timeout)
        if self._snapshots.loaded.wait(timeout):
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
        with self._state_lock:
            if self._state is WatcherState.CLOSED:
                raise ClosedError(f"watcher of {self.path} is closed")
            if self._forked:
                self._handle.check()
            subscriber = self._snapshots.subscribe(listener)
        if self._snapshots.loaded.is_set():
            subscriber.deliver(self._snapshots.membership)

    def remove_listener(self, listener: MembershipListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self._snapshots.unsubscribe(listener)

    def wait_for(self, predicate: Callable[[Membership], bool], timeout: float) -> bool:
        """Block until the current snapshot satisfies ``predicate``; False if ``timeout`` s pass first."""
        if self._forked:
            self._handle.check()
        return self._snapshots.wait_for(predicate, timeout)

    def close(self) -> None:
        """Stop watching and remove every callback put on the client. Idempotent; never reopens.

        The kazoo client is stopped only if the watcher created it.
        """
        with self._state_lock:
            if self._state is WatcherState.CLOSED:
                return
            following = self._state is not WatcherState.NEW
            self._state = WatcherState.CLOSED
        self._snapshots.unsubscribe_all()
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
        m = self._snapshots.membership
        return f"<ServiceWatcher {self.path} {self._state.value} version={m.version} instances={len(m)}>"

    # -- following the client ---------------------------------------------------------------------------

    def _follow(self, timeout: float) -> None:
        """Attach to the client's worker and schedule the first sync (the STARTING half of start)."""
        try:
            client = self._handle.get(timeout)
        except BaseException:
            with self._state_lock:
                if self._state is WatcherState.STARTING:
                    self._state = WatcherState.NEW
            raise
        self._attach(client)

    def _attach(self, client: KazooClient) -> None:
        """Follow ``client`` (connected or not: a sync waits for CONNECTED) from its worker thread."""
        worker = ClientWorker.attach(client)
        with self._state_lock:
            if self._state is WatcherState.CLOSED:  # closed while connecting
                worker.detach(self._request_timeout)
                raise ClosedError(f"watcher of {self.path} is closed")
            self._client, self._worker = client, worker
            generation = self._generation
            self._watches = RunWatches(self, generation)
            self._job = Job(worker, lambda: self._step(generation))
            self._join_rewatch(client, worker, generation)
            self._state = WatcherState.STARTED
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
            if reset and self._state is not WatcherState.CLOSED:
                self._state = WatcherState.NEW
            with self._lock:
                job, self._job = self._job, None
                self._children = {}
                self._children_dirty, self._rearm, self._data_dirty = True, False, set()
                self._grace.end()
        if job is not None:
            job.cancel()
        if worker is not None:
            worker.unsubscribe(self._on_state)
        self._leave_rewatch()  # first: a reconnect must not put back what is taken back below
        if client is not None:
            watches.drop(client, self.path)
        if worker is not None:
            # A failed start does not wait for a sync still running there: it is told to stop.
            worker.detach(0.0 if reset else self._request_timeout)
        if reset:
            self._snapshots.loaded.clear()
            self._handle.reset()
            self._client = None

    def _after_fork_in_child(self) -> _fork.Resume | None:
        """Keep the last membership; follow a new session of an owned client, never the parent's."""
        self._state_lock = threading.Lock()
        self._lock = threading.Lock()
        self._snapshots._after_fork_in_child()
        loaded = self._snapshots.loaded.is_set()
        # What the parent's worker would have run belongs to the parent: a new generation, no worker.
        self._generation += 1
        self._client = self._worker = self._job = None
        self._rewatcher = self._watch_set = None
        self._children = {}
        self._children_dirty, self._rearm, self._data_dirty = True, False, set()
        self._grace.end()
        if self._state is WatcherState.STARTING or (self._state is WatcherState.STARTED and not loaded):
            self._state = (
                WatcherState.NEW
            )  # a start in progress: the thread running it is not in this process
        elif self._state is WatcherState.STARTED:
            if self._handle.reconnects_after_fork:
                return self._resume
            self._forked = True
        return None

    def _resume(self) -> None:
        """After a fork: follow a new client (connecting in the background) from the last membership."""
        with self._state_lock:
            if self._state is not WatcherState.STARTED or self._worker is not None:
                return
        try:
            client = self._handle.get_nowait()
        except ZklbError:  # closed meanwhile
            return
        log.info("%s: following a new ZooKeeper session after fork", self.path)
        self._attach(client)
