"""`LoadBalancer`: live membership from ZooKeeper, passive health, a strategy, and the hot path.

Rules of this module:

- The hot path (``get_server()``) reads one reference, the current pick function, and calls it: no
  lock, no I/O. ``acquire()`` adds a short lock around the in-flight count; nothing slow ever holds it.
- A membership change or a strategy change builds the new picker off to the side (under ``_update_lock``,
  which the hot path never takes), then swaps it in under the short lock together with the in-flight
  counts, so counts of instances that stay survive the change and never go negative.
- Ejected and draining instances are *skipped*, not removed: the picker is not rebuilt when one is
  ejected. While nothing is skipped the pick function is the picker's own ``pick`` (no cost); while
  something is, a wrapper that re-picks past skipped ones (and brings ejected ones back on time).
- Snapshots older than the one installed are ignored, so a late listener call cannot roll back; once
  closed, nothing (a listener, a start that was in progress) installs anything again.
- The hot path never does ZooKeeper I/O: a pick before ``start()`` starts the balancer on a background
  thread (`SharedStart`) and waits for it, with every other waiting caller, at most ``start_timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from time import perf_counter
from types import MappingProxyType, TracebackType
from typing import Self

from kazoo.client import KazooClient

from zklb._starting import SharedStart
from zklb._zk import DEFAULT_REQUEST_TIMEOUT, ClientHandle, check_root, check_service, check_timeout
from zklb.codecs import Codec
from zklb.discovery import ServiceWatcher
from zklb.errors import ClosedError, NoServerAvailable, RegistryError
from zklb.health import Connection, HealthPolicy, OutlierDetector, PoolStats
from zklb.instance import ServiceInstance
from zklb.lease import Lease, current_lease
from zklb.membership import Membership
from zklb.registry import Registration, Registry
from zklb.stats import EWMA_ALPHA, InstanceStats, StatsRecorder
from zklb.strategies import Picker, Strategy, create_strategy

__all__ = ["Lease", "LoadBalancer"]

log = logging.getLogger("zklb.balancer")

DEFAULT_SERVICE = "default"
#: Picks tried before a skip-aware scan, while some instances are ejected or draining.
_REPICKS = 4


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


_DEFAULT_HEALTH = HealthPolicy()


class LoadBalancer:
    """Client-side load balancing over the live instances of one service registered in ZooKeeper.

    ``client`` is a hosts string (a kazoo client is made on first use and stopped by ``close()``) or a
    started `KazooClient` (shared, never stopped here). ``start()`` (or ``await astart()``) connects and
    loads the pool; a pick before that starts it in the background and waits up to ``start_timeout``.

    ``health`` is the passive health policy (`HealthPolicy`; None turns ejection off).
    ``request_timeout`` bounds each ZooKeeper request, ``resync_delay`` the random delay of a re-sync
    after a reconnect; when every instance disappears at once, the last pool is kept ``empty_grace``
    seconds (a registrar's session expiry, re-registered within a second, must not empty the pool);
    ``clock`` (for ejection times) is injectable for tests.

    ``get_server()`` is the hot path: O(1) for the built-in strategies, lock-free and without I/O.
    """

    def __init__(
        self,
        client: str | KazooClient | None = "127.0.0.1:2181",
        service: str = DEFAULT_SERVICE,
        *,
        strategy: str | Strategy = "round_robin",
        root: str = "/services",
        codec: Codec | None = None,
        session_timeout: float = 10.0,
        health: HealthPolicy | None = _DEFAULT_HEALTH,
        start_timeout: float = 10.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resync_delay: float = 1.0,
        empty_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.service = check_service(service)
        self.root = check_root(root)
        self._strategy = create_strategy(strategy)
        self._codec = codec
        if health is not None and not isinstance(health, HealthPolicy):
            raise TypeError(f"health must be a HealthPolicy or None, got {type(health).__name__}")
        self._start_timeout = check_timeout("start_timeout", start_timeout)
        self._request_timeout = check_timeout("request_timeout", request_timeout)
        self._resync_delay = check_timeout("resync_delay", resync_delay, zero=True)
        self._empty_grace = check_timeout("empty_grace", empty_grace, zero=True)
        self._rng = rng
        self._handle = None if client is None else ClientHandle(client, session_timeout=session_timeout)
        self._watcher: ServiceWatcher | None = None
        self._registry: Registry | None = None
        self._state = _State.NEW
        self._starting: SharedStart | None = None
        self._start_lock = threading.Lock()
        # Serialises rebuilds (membership or strategy changes); the hot path never takes it.
        self._update_lock = threading.Lock()
        # Guards in-flight counts, stats, health and the swap; held for a few hundred nanoseconds at most.
        self._lock = threading.Lock()
        self._membership = Membership(service=self.service, version=0)
        # Notified after each swap, for wait_for(); never taken on the hot path.
        self._installed = threading.Condition(threading.Lock())
        self._picker: Picker | None = None
        self._acquire_pick: Callable[[], ServiceInstance] | None = None
        self._in_flight: dict[str, int] = {}
        self._stats: dict[str, StatsRecorder] = {}
        # Releases that could not take the lock (see _release), applied by the next one to hold it.
        self._deferred: deque[tuple[ServiceInstance, bool, float | None, bool, bool]] = deque()
        self._health = None if health is None else OutlierDetector(health, clock)
        # The detector's probation set, or an empty one: one truth test per success on the hot path.
        self._probation: set[str] = set() if self._health is None else self._health.probation
        self._draining: frozenset[str] = frozenset()
        self._skipped: frozenset[str] = frozenset()  # ejected (unless in panic) or draining
        self._panic = False
        # True while acquire() may take its fast path: started and nothing skipped.
        self._fast = False
        self._pick: Callable[[], ServiceInstance] = self._empty if client is None else self._start_then_pick

    @classmethod
    def static(
        cls,
        servers: Iterable[str | ServiceInstance],
        *,
        service: str = "static",
        strategy: str | Strategy = "round_robin",
        health: HealthPolicy | None = _DEFAULT_HEALTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> LoadBalancer:
        """A balancer over a fixed list of servers, without ZooKeeper (for tests, benchmarks, fallbacks)."""
        lb = cls(None, service, strategy=strategy, health=health, clock=clock)
        instances = tuple(s if isinstance(s, ServiceInstance) else ServiceInstance.parse(s) for s in servers)
        lb._state = _State.STARTED
        lb._install(Membership(service, 1, instances))
        return lb

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        """Connect, load the membership and begin following it; returns once the pool is loaded.

        A service with no instances yet is fine: the pool fills as servers register. Raises
        `RegistryError` if that takes more than ``timeout`` seconds (default ``start_timeout``); a failed
        start leaves nothing behind and may be tried again. Concurrent callers share one attempt.
        """
        attempt = self._begin_start(timeout)
        if attempt is not None:
            limit = self._start_timeout if timeout is None else timeout
            if not attempt.wait(limit):
                raise RegistryError(f"load balancer for {self.service!r} not started within {limit:g} s")
            self._raise_if_failed(attempt)
        return self

    async def astart(self, timeout: float | None = None) -> Self:
        """`start` for asyncio: the event loop goes on while the balancer connects and loads."""
        attempt = self._begin_start(timeout)
        if attempt is not None:
            limit = self._start_timeout if timeout is None else timeout
            loop = asyncio.get_running_loop()
            ended: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ended.done():
                    ended.set_result(None)

            attempt.add_done_callback(lambda: loop.call_soon_threadsafe(wake))
            try:
                await asyncio.wait_for(ended, limit)
            except TimeoutError:
                raise RegistryError(
                    f"load balancer for {self.service!r} not started within {limit:g} s"
                ) from None
            self._raise_if_failed(attempt)
        return self

    def close(self) -> None:
        """Remove this balancer's own registrations, stop watching and, if owned, stop the kazoo client.

        Idempotent; a closed balancer raises `ClosedError` from every pick and never starts again.
        """
        with self._start_lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            starting, self._starting = self._starting, None
        with self._lock:
            self._fast = False
            self._pick = self._closed
        if starting is not None:
            starting.finish(ClosedError(f"load balancer for {self.service!r} was closed while starting"))
        if self._registry is not None:
            self._registry.close()
        if self._watcher is not None:
            self._watcher.close()
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def started(self) -> bool:
        """True once the pool is loaded and followed (and not closed)."""
        return self._state is _State.STARTED

    def _begin_start(self, timeout: float | None) -> SharedStart | None:
        """The start attempt in progress (made if none is), or None if already started."""
        with self._start_lock:
            if self._state is _State.CLOSED:
                raise ClosedError(f"load balancer for {self.service!r} is closed")
            if self._state is _State.STARTED:
                return None
            if self._starting is None:
                limit = self._start_timeout if timeout is None else timeout
                self._starting = SharedStart(lambda: self._run_start(limit), f"zklb-start-{self.service}")
            return self._starting

    def _raise_if_failed(self, attempt: SharedStart) -> None:
        error = attempt.error
        if error is None:
            return
        if isinstance(error, ClosedError | RegistryError):
            raise error
        raise RegistryError(f"load balancer for {self.service!r} could not start: {error!r}") from error

    def _run_start(self, timeout: float) -> None:
        """The start itself, on the attempt's thread: all or nothing."""
        handle = self._handle
        assert handle is not None
        watcher: ServiceWatcher | None = None
        try:
            client = handle.get(timeout)
            watcher = ServiceWatcher(
                client,
                self.service,
                root=self.root,
                codec=self._codec,
                request_timeout=self._request_timeout,
                resync_delay=self._resync_delay,
                empty_grace=self._empty_grace,
                rng=self._rng,
            )
            watcher.start(timeout)
            with self._start_lock:
                if self._state is _State.CLOSED:
                    raise ClosedError(f"load balancer for {self.service!r} was closed while starting")
                self._watcher = watcher
            self._install(watcher.membership)
            watcher.add_listener(self._install)
            with self._start_lock:
                if self._is_closed():  # re-read: close() may have run meanwhile
                    raise ClosedError(f"load balancer for {self.service!r} was closed while starting")
                self._state = _State.STARTED
                self._starting = None
            with self._lock:
                self._refresh_locked()
        except BaseException:
            if watcher is not None:
                watcher.close()
            with self._start_lock:
                self._starting = None
                self._watcher = None if self._watcher is watcher else self._watcher
                closed = self._state is _State.CLOSED
            if not closed:
                handle.reset()  # an owned client that connected but could not load: stop it too
            raise

    # -- the hot path --------------------------------------------------------------------------------

    def get_server(self) -> ServiceInstance:
        """The next server by the current strategy, skipping ejected and draining ones.

        Lock-free and without I/O: one reference read and the strategy's pick (O(1) for the built-ins).
        Raises `NoServerAvailable` when the pool is empty, `ClosedError` once closed.
        """
        return self._pick()

    def acquire(self, exclude: Collection[str | ServiceInstance] = ()) -> Lease:
        """Pick a server and count a request on it until the returned `Lease` is released.

        Use as ``with lb.acquire() as server:``. ``exclude`` (instances or ids) skips servers already
        tried, as retries do; `NoServerAvailable` if nothing is left. No I/O; one short lock.
        """
        if exclude or not self._fast or self._deferred:
            return self._acquire_slow(exclude)
        lock = self._lock
        # acquire()/release() rather than ``with``: half the cost, and this runs on every request.
        lock.acquire()
        try:
            fused = self._acquire_pick
            if fused is not None:
                server = fused()  # pick and count in one call (least-connections)
            else:
                picker = self._picker
                if picker is None:
                    raise NoServerAvailable(self.service, self.root)
                server = picker.pick()
                if picker.tracks_load:
                    picker.acquired(server)
            key = server.id
            counts = self._in_flight
            counts[key] = counts.get(key, 0) + 1
        finally:
            lock.release()
        return Lease(self, server, perf_counter())

    def _acquire_slow(self, exclude: Collection[str | ServiceInstance]) -> Lease:
        if self._state is not _State.STARTED:
            self._ensure_started()
        self._expire_due()
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        notice = None
        with self._lock:
            if self._deferred:
                notice = self._drain_locked()
            picker = self._picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            skipped = self._skipped
            server = _choose(picker, skipped | ids if ids else skipped)
            if server is None and skipped:
                # Every instance not tried is ejected or draining: better one of them than no retry.
                server = _choose(picker, ids)
            if server is None:
                reason = f"all {len(self._membership)} instances excluded"
                raise NoServerAvailable(self.service, self.root, reason)
            key = server.id
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            if picker.tracks_load:
                picker.acquired(server)
        if notice:
            log.warning("%s", notice)
        return Lease(self, server, perf_counter())

    def has_server(self, exclude: Collection[str | ServiceInstance] = ()) -> bool:
        """Whether ``acquire(exclude=exclude)`` would find a server now (no I/O, never starts anything).

        Ejected and draining instances count: a pick falls back to them rather than to nothing.
        """
        members = self._membership.by_id
        if self._picker is None or not members or self._is_closed():
            return False
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        return any(key not in ids for key in members) if ids else True

    def report(self, server: ServiceInstance, *, success: bool, latency: float | None = None) -> None:
        """Record an outcome for ``server`` (it feeds passive health like a lease's outcome does).

        Inside ``with lb.acquire() as server:`` this sets that lease's outcome (recorded on exit, once);
        elsewhere (e.g. for a server from ``get_server()``) it is recorded now.
        """
        lease = current_lease.get()
        if lease is not None and lease._balancer is self and lease.server.id == server.id:
            lease.report(success)
            return
        self._release(server, success, latency, counted=False)

    # -- membership and state -------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The snapshot the balancer is picking from."""
        return self._membership

    def servers(self) -> tuple[ServiceInstance, ...]:
        """The instances now in the pool (ejected and draining ones included), in their stable order."""
        if self._state is not _State.STARTED:
            self._ensure_started()
        return self._membership.instances

    def stats(self) -> Mapping[str, InstanceStats]:
        """Request statistics and health per instance id, for the instances in the pool."""
        self._expire_due()
        health = self._health
        with self._lock:
            notice = self._drain_locked() if self._deferred else None
            result = {}
            for key in self._membership.by_id:
                until = None if health is None else health.ejected.get(key)
                times = 0 if health is None else health.times_ejected(key)
                recorder = self._stats.get(key, _EMPTY_STATS)
                result[key] = recorder.snapshot(self._in_flight.get(key, 0), until, times)
        if notice:
            log.warning("%s", notice)
        return MappingProxyType(result)

    def pool_stats(self) -> PoolStats:
        """Size, health and connection of the pool now (a frozen `PoolStats`)."""
        self._expire_due()
        with self._lock:
            members = self._membership
            ejected = 0 if self._health is None else len(self._health.ejected)
            draining = len(self._draining)
            healthy = sum(1 for key in members.by_id if key not in self._draining) - (
                0 if self._health is None else len(self._health.ejected.keys() - self._draining)
            )
            panic = self._panic
        return PoolStats(
            size=len(members),
            healthy=healthy,
            ejected=ejected,
            draining=draining,
            panic=panic,
            version=members.version,
            connection=self._connection(),
        )

    def wait_for(self, predicate: Callable[[Membership], bool], timeout: float) -> bool:
        """Block until the pool the balancer picks from satisfies ``predicate``; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._installed:
            while not predicate(self._membership):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._installed.wait(remaining)
            return True

    @property
    def strategy(self) -> Strategy:
        """The strategy in use."""
        return self._strategy

    def set_strategy(self, strategy: str | Strategy) -> None:
        """Switch strategy (a name such as ``"weighted_round_robin"`` or a `Strategy`); takes effect at once.

        Unknown names raise `UnknownStrategy` listing the valid ones. In-flight counts are kept.
        """
        new = create_strategy(strategy)
        with self._update_lock:
            self._strategy = new
            self._install_locked(self._membership, force=True)

    def add_server(
        self,
        server: str | ServiceInstance,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        id: str | None = None,
        timeout: float = 10.0,
    ) -> Registration:
        """Register ``server`` for this service (an ephemeral znode) and wait until the pool has it.

        Returns the `Registration` (``update()`` it, ``close()`` it). It is removed by ``close()``.
        """
        registry = self._ensure_registry()
        registration = registry.register(self.service, server, weight=weight, metadata=metadata, id=id)
        key = registration.instance.id
        if not self.wait_for(lambda m: key in m.by_id, timeout):
            log.warning("%s registered but not yet seen in the pool after %g s", registration.path, timeout)
        return registration

    def remove_server(self, server: str | ServiceInstance | Registration, *, timeout: float = 10.0) -> bool:
        """Deregister a server this balancer added (by instance, id, URL or registration).

        Returns False if it did not add such a server. Waits until the pool no longer has it.
        """
        registry = self._registry
        if registry is None:
            return False
        found = next((r for r in registry.registrations() if _names(server, r)), None)
        if found is None:
            return False
        found.close()
        gone = found.instance.id
        self.wait_for(lambda m: gone not in m.by_id, timeout)
        return True

    # -- internals ------------------------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def _connection(self) -> Connection:
        if self._handle is None:
            return "static"
        watcher = self._watcher
        return "lost" if watcher is None else watcher.connection

    def _ensure_started(self) -> None:
        """Start (shared, in the background) and wait up to ``start_timeout``; for callers of picks."""
        if self._state is _State.CLOSED:
            raise ClosedError(f"load balancer for {self.service!r} is closed")
        if self._handle is None or self._state is _State.STARTED:
            return
        attempt = self._begin_start(None)
        if attempt is None:
            return
        if _on_event_loop():
            # Waiting here would stall every task of the loop: report, and let astart() do the waiting.
            raise NoServerAvailable(
                self.service, self.root, "the balancer is starting; await lb.astart() before picking"
            )
        if not attempt.wait(self._start_timeout):
            raise NoServerAvailable(
                self.service, self.root, f"membership not loaded within {self._start_timeout:g} s"
            )
        error = attempt.error
        if isinstance(error, ClosedError):
            raise error
        if error is not None:
            raise NoServerAvailable(self.service, self.root, f"could not start: {error}") from error

    def _ensure_registry(self) -> Registry:
        self._ensure_started()
        if self._handle is None:
            raise ClosedError("a static load balancer has no registry; use LoadBalancer(hosts, service)")
        with self._start_lock:
            if self._state is _State.CLOSED:
                raise ClosedError(f"load balancer for {self.service!r} is closed")
            if self._registry is None:
                self._registry = Registry(
                    self._handle.get(),
                    root=self.root,
                    codec=self._codec,
                    request_timeout=self._request_timeout,
                )
            return self._registry

    def _start_then_pick(self) -> ServiceInstance:
        # Installed as the pick function until the first start, so the hot path never checks state.
        self._ensure_started()
        return self._pick()

    def _empty(self) -> ServiceInstance:
        raise NoServerAvailable(self.service, self.root)

    def _closed(self) -> ServiceInstance:
        raise ClosedError(f"load balancer for {self.service!r} is closed")

    def _pick_skipping(self) -> ServiceInstance:
        """The pick function while some instances are ejected or draining: re-pick past them."""
        health = self._health
        if health is not None and health.next_return <= health.now():
            self._expire_due()
        picker = self._picker
        if picker is None:
            return self._pick()
        server = _choose(picker, self._skipped)
        return server if server is not None else picker.pick()

    def _expire_due(self) -> None:
        """Bring back instances whose ejection time is over (on probation)."""
        health = self._health
        if health is None or health.next_return > health.now():
            return
        with self._lock:
            back = health.expire()
            notice = self._refresh_locked() if back else None
        for key in back:
            log.info("%s: instance %s back from ejection, on probation", self.service, key)
        if notice:
            log.warning("%s", notice)

    def _install(self, membership: Membership) -> None:
        with self._update_lock:
            self._install_locked(membership, force=False)

    def _install_locked(self, membership: Membership, *, force: bool) -> None:
        if self._state is _State.CLOSED:
            return  # nothing revives a closed balancer, a late listener call included
        if not force and membership.version <= self._membership.version and self._picker is not None:
            return  # an older or the same snapshot: never roll back
        picker = self._strategy.build(membership) if membership.instances else None
        draining = frozenset(inst.id for inst in membership.instances if inst.draining)
        with self._lock:
            if self._is_closed():  # re-read: close() may have run while the picker was built
                return
            drained = self._drain_locked() if self._deferred else None
            if picker is not None:
                picker.seed({k: n for k, n in self._in_flight.items() if k in membership.by_id})
            # Forget stats of instances that left; counts of in-flight leases stay until released.
            for key in [k for k in self._stats if k not in membership.by_id]:
                del self._stats[key]
            if self._health is not None:
                self._health.retain(membership.by_id)
            self._membership = membership
            self._picker = picker
            self._draining = draining
            # Optional on pickers: pick + acquired() fused, for those that track load.
            self._acquire_pick = getattr(picker, "acquire_pick", None) if picker is not None else None
            notice = self._refresh_locked()
        for text in (drained, notice):
            if text:
                log.warning("%s", text)
        with self._installed:
            self._installed.notify_all()

    def _refresh_locked(self) -> str | None:
        """Recompute what picks skip, panic, and the pick functions; a panic notice to log, if entered."""
        picker = self._picker
        started = self._state is _State.STARTED
        if self._state is _State.CLOSED:
            self._fast, self._pick = False, self._closed
            return None
        if picker is None:
            self._skipped, self._panic, self._fast = frozenset(), False, started
            if started:
                self._pick = self._empty
            return None
        draining = self._draining
        active = len(self._membership) - len(draining)
        ejected = frozenset() if self._health is None else frozenset(self._health.ejected) - draining
        panic = False
        if active == 0:
            skipped: frozenset[str] = frozenset()  # everything draining: better them than nothing
        else:
            health = self._health
            panic = health is not None and health.policy.panics(active, active - len(ejected))
            skipped = draining if panic else draining | ejected
        notice = None
        if panic and not self._panic:
            notice = (
                f"{self.service}: panic: only {active - len(ejected)} of {active} instances healthy; "
                "picking from the whole pool, ejected ones included"
            )
        self._skipped, self._panic = skipped, panic
        if not started:
            self._fast = False
        elif skipped or ejected:
            # While anything is ejected (in panic too), picks go through the wrapper that notices when an
            # ejection ends, so that panic ends, and probation starts, on the request path itself.
            self._fast, self._pick = False, self._pick_skipping
        else:
            self._fast, self._pick = True, picker.pick
        return notice

    def _release(
        self,
        server: ServiceInstance,
        success: bool,
        latency: float | None,
        counted: bool = True,
        record: bool = True,
    ) -> None:
        """End one in-flight request (``counted``) and/or record its outcome (``record``).

        Never waits for the lock: a lease may be released from a finaliser, which can run in the middle
        of a locked section of this very thread (any allocation may start a GC pass). When the lock is
        held, the release is queued (a deque append is atomic) and applied by whoever takes it next:
        every ``acquire()`` and ``stats()`` applies the queue before it reads a count.
        """
        lock = self._lock
        if not lock.acquire(False):
            self._deferred.append((server, success, latency, counted, record))
            return
        try:
            notice = self._release_locked(server, success, latency, counted, record)
            if self._deferred:
                notice = self._drain_locked(notice)
        finally:
            lock.release()
        if notice:
            log.warning("%s", notice)

    def _drain_locked(self, notice: str | None = None) -> str | None:
        """Apply the releases queued while the lock was held; returns the notices to log."""
        deferred = self._deferred
        while deferred:
            try:
                item = deferred.popleft()
            except IndexError:  # another holder emptied it first (cannot happen under the lock; be safe)
                break
            more = self._release_locked(*item)
            if more:
                notice = more if notice is None else f"{notice}\n{more}"
        return notice

    def _release_locked(
        self, server: ServiceInstance, success: bool, latency: float | None, counted: bool, record: bool
    ) -> str | None:
        key = server.id
        if counted:
            counts = self._in_flight
            count = counts.get(key, 0)
            if count > 1:
                counts[key] = count - 1
            elif count == 1:
                del counts[key]
            else:
                return None  # never counted (cannot happen through Lease); never drive a count negative
        picker = self._picker
        if not record:
            if picker is not None and picker.tracks_load:
                picker.released(server, success, 0.0)
            return None
        stats = self._stats.get(key)
        if stats is None:
            if key not in self._membership.by_id:
                return None  # the instance left the pool while the request ran
            stats = self._stats[key] = StatsRecorder()
        notice = None
        # The statistics update, written out here: a call frame is a tenth of this path's cost.
        stats.requests += 1
        if success:
            stats.consecutive_failures = 0
            if self._probation and key in self._probation:
                self._probation.discard(key)  # a success ends the probation
        else:
            stats.failures += 1
            stats.consecutive_failures += 1
            health = self._health
            if health is not None:
                active = len(self._membership) - len(self._draining)
                if health.on_failure(key, stats.consecutive_failures, active):
                    notice = self._ejected_locked(key, stats.consecutive_failures)
        if latency is not None:
            stats.last_latency = latency
            ewma = stats.latency_ewma
            stats.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)
        if counted and picker is not None and picker.tracks_load:
            picker.released(server, success, latency or 0.0)
        return notice

    def _ejected_locked(self, key: str, failures: int) -> str:
        assert self._health is not None
        panic = self._refresh_locked()
        until = self._health.ejected[key] - self._health.now()
        times = self._health.times_ejected(key)
        notice = (
            f"{self.service}: ejected instance {key} for {until:g} s after {failures} failures in a row "
            f"(ejection {times})"
        )
        return notice if panic is None else f"{notice}; {panic}"

    def __repr__(self) -> str:
        m = self._membership
        return (
            f"<LoadBalancer {self.root}/{self.service} {self._state.value} strategy={self._strategy.name} "
            f"instances={len(m)}>"
        )


_EMPTY_STATS = StatsRecorder()


def _choose(picker: Picker, skipped: Collection[str]) -> ServiceInstance | None:
    """A pick not in ``skipped``: a few ordinary picks first (cheap, fair), then the picker's scan."""
    if not skipped:
        return picker.pick()
    for _ in range(_REPICKS):
        server = picker.pick()
        if server.id not in skipped:
            return server
    return picker.pick_excluding(skipped)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _names(server: str | ServiceInstance | Registration, registration: Registration) -> bool:
    """Whether ``server`` (a registration, instance, id or URL) refers to ``registration``."""
    if server is registration:
        return True
    inst = registration.instance
    if isinstance(server, ServiceInstance):
        return server.id == inst.id
    return server in (inst.id, inst.url)
