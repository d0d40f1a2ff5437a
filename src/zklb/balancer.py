"""`LoadBalancer`: live membership from ZooKeeper, a strategy, and the hot path that picks a server.

Rules of this module:

- The hot path (``get_server()``) reads one reference, the current picker's ``pick``, and calls it: no
  lock, no I/O. ``acquire()`` adds a short lock around the in-flight count; nothing slow ever holds it.
- A membership change or a strategy change builds the new picker off to the side (under ``_update_lock``,
  which the hot path never takes), then swaps it in under the short lock together with the in-flight
  counts, so counts of instances that stay survive the change and never go negative.
- Snapshots older than the one installed are ignored, so a late listener call cannot roll back.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from contextvars import ContextVar, Token
from time import perf_counter
from types import MappingProxyType, TracebackType
from typing import Self

from kazoo.client import KazooClient

from zklb._zk import ClientHandle, check_root, check_service
from zklb.codecs import Codec
from zklb.discovery import ServiceWatcher
from zklb.errors import ClosedError, NoServerAvailable
from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.registry import Registration, Registry
from zklb.stats import EWMA_ALPHA, InstanceStats, StatsRecorder
from zklb.strategies import Picker, Strategy, create_strategy

__all__ = ["Lease", "LoadBalancer"]

log = logging.getLogger("zklb.balancer")

DEFAULT_SERVICE = "default"

# The innermost lease entered in this thread or task, so that ``lb.report()`` can mark it.
_current_lease: ContextVar[Lease | None] = ContextVar("zklb_current_lease", default=None)


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


_STARTED = _State.STARTED  # a module global: one lookup less on every acquire()


class Lease:
    """One in-flight request on one instance, from ``acquire()`` until release.

    ``with lb.acquire() as server:`` (or ``async with``) releases on leaving the block: an exception in
    the block counts as a failure (and propagates), otherwise a success unless ``report(False)`` said so.
    Cancellation and interrupts (exceptions that are not ``Exception``) record no outcome. Outside a
    ``with`` block, call ``release()`` or ``cancel()`` yourself. Releasing twice does nothing.
    """

    # Kept lean on purpose: one is made per request, and every attribute set is on the hot path.
    __slots__ = ("_balancer", "_started", "_success", "_token", "server")

    def __init__(self, balancer: LoadBalancer, server: ServiceInstance, started: float) -> None:
        self.server = server
        self._balancer: LoadBalancer | None = balancer  # None once released
        self._started = started
        self._success: bool | None = None
        self._token: Token[Lease | None] | None = None

    @property
    def released(self) -> bool:
        """True once the lease has been released."""
        return self._balancer is None

    def report(self, success: bool) -> None:
        """Set the outcome to record on release (e.g. ``False`` for a 5xx that raised nothing)."""
        self._success = success

    def release(self, success: bool | None = None) -> None:
        """End the request: its in-flight count goes down and its outcome and latency are recorded."""
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        if success is None:
            success = self._success is not False
        balancer._release(self.server, success, perf_counter() - self._started)

    def cancel(self) -> None:
        """End the request without recording an outcome (it was abandoned: cancelled, interrupted)."""
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        balancer._release(self.server, True, None, record=False)

    def __enter__(self) -> ServiceInstance:
        self._token = _current_lease.set(self)
        return self.server

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                _current_lease.reset(token)
            except ValueError:  # exited in another context than entered (e.g. a moved generator)
                pass
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        if exc_type is not None and not issubclass(exc_type, Exception):
            # CancelledError, KeyboardInterrupt, GeneratorExit: nothing learnt about the server.
            balancer._release(self.server, True, None, record=False)
            return
        balancer._release(
            self.server, exc_type is None and self._success is not False, perf_counter() - self._started
        )

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "released" if self._balancer is None else "in flight"
        return f"<Lease {self.server.url} {state}>"


class LoadBalancer:
    """Client-side load balancing over the live instances of one service registered in ZooKeeper.

    ``client`` is a hosts string (a kazoo client is made on first use and stopped by ``close()``) or a
    started `KazooClient` (shared, never stopped here). The balancer starts itself on first use;
    ``start()`` does it explicitly and waits for the first membership.

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
    ) -> None:
        self.service = check_service(service)
        self.root = check_root(root)
        self._strategy = create_strategy(strategy)
        self._codec = codec
        self._handle = None if client is None else ClientHandle(client, session_timeout=session_timeout)
        self._watcher: ServiceWatcher | None = None
        self._registry: Registry | None = None
        self._state = _State.NEW
        self._start_lock = threading.Lock()
        # Serialises rebuilds (membership or strategy changes); the hot path never takes it.
        self._update_lock = threading.Lock()
        # Guards in-flight counts, stats and the swap; held for a few hundred nanoseconds at most.
        self._lock = threading.Lock()
        self._membership = Membership(service=self.service, version=0)
        # Notified after each swap, for wait_for(); never taken on the hot path.
        self._installed = threading.Condition(threading.Lock())
        self._picker: Picker | None = None
        self._acquire_pick: Callable[[], ServiceInstance] | None = None
        self._in_flight: dict[str, int] = {}
        self._stats: dict[str, StatsRecorder] = {}
        self._pick: Callable[[], ServiceInstance] = self._empty if client is None else self._start_then_pick

    @classmethod
    def static(
        cls,
        servers: Iterable[str | ServiceInstance],
        *,
        service: str = "static",
        strategy: str | Strategy = "round_robin",
    ) -> LoadBalancer:
        """A balancer over a fixed list of servers, without ZooKeeper (for tests, benchmarks, fallbacks)."""
        lb = cls(None, service, strategy=strategy)
        instances = tuple(s if isinstance(s, ServiceInstance) else ServiceInstance.parse(s) for s in servers)
        lb._state = _State.STARTED
        lb._install(Membership(service, 1, instances))
        return lb

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Connect, load the membership and begin following it; returns once the pool is loaded.

        A service with no instances yet is fine: the pool fills as servers register.
        """
        with self._start_lock:
            if self._state is _State.CLOSED:
                raise ClosedError(f"load balancer for {self.service!r} is closed")
            if self._state is _State.STARTED:
                return self
            assert self._handle is not None
            client = self._handle.get(timeout)
            watcher = ServiceWatcher(client, self.service, root=self.root, codec=self._codec)
            watcher.start(timeout)
            self._watcher = watcher
            self._install(watcher.membership)
            watcher.add_listener(self._install)
            self._state = _State.STARTED
        return self

    def close(self) -> None:
        """Remove this balancer's own registrations, stop watching and, if owned, stop the kazoo client."""
        with self._start_lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            self._pick = self._empty  # raises ClosedError from now on
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

    # -- the hot path --------------------------------------------------------------------------------

    def get_server(self) -> ServiceInstance:
        """The next server by the current strategy. Raises `NoServerAvailable` when the pool is empty.

        Lock-free and without I/O: one reference read and the strategy's pick (O(1) for the built-ins).
        """
        return self._pick()

    def acquire(self, exclude: Collection[str | ServiceInstance] = ()) -> Lease:
        """Pick a server and count a request on it until the returned `Lease` is released.

        Use as ``with lb.acquire() as server:``. ``exclude`` (instances or ids) skips servers already
        tried, as retries do; `NoServerAvailable` if nothing is left. No I/O; one short lock.
        """
        if exclude or self._state is not _STARTED:
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
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        with self._lock:
            picker = self._picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            server = picker.pick_excluding(ids) if ids else picker.pick()
            if server is None:
                reason = f"all {len(self._membership)} instances excluded"
                raise NoServerAvailable(self.service, self.root, reason)
            key = server.id
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            if picker.tracks_load:
                picker.acquired(server)
        return Lease(self, server, perf_counter())

    def report(self, server: ServiceInstance, *, success: bool, latency: float | None = None) -> None:
        """Record an outcome for ``server``.

        Inside ``with lb.acquire() as server:`` this sets that lease's outcome (recorded on exit, once);
        elsewhere (e.g. for a server from ``get_server()``) it is recorded now.
        """
        lease = _current_lease.get()
        if lease is not None and lease._balancer is self and lease.server.id == server.id:
            lease.report(success)
            return
        self._release(server, success, latency, counted=False)

    # -- membership -----------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The snapshot the balancer is picking from."""
        return self._membership

    def servers(self) -> tuple[ServiceInstance, ...]:
        """The instances now in the pool, in their stable order."""
        if self._state is not _State.STARTED:
            self._ensure_started()
        return self._membership.instances

    def stats(self) -> Mapping[str, InstanceStats]:
        """Request statistics per instance id, for the instances in the pool."""
        with self._lock:
            return MappingProxyType(
                {
                    key: self._stats.get(key, _EMPTY_STATS).snapshot(self._in_flight.get(key, 0))
                    for key in self._membership.by_id
                }
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

    def _ensure_started(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError(f"load balancer for {self.service!r} is closed")
        if self._state is _State.NEW:
            self.start()

    def _ensure_registry(self) -> Registry:
        self._ensure_started()
        if self._handle is None:
            raise ClosedError("a static load balancer has no registry; use LoadBalancer(hosts, service)")
        with self._start_lock:
            if self._registry is None:
                self._registry = Registry(self._handle.get(), root=self.root, codec=self._codec)
            return self._registry

    def _start_then_pick(self) -> ServiceInstance:
        # Installed as the pick function until the first start, so the hot path never checks state.
        self._ensure_started()
        return self._pick()

    def _empty(self) -> ServiceInstance:
        if self._state is _State.CLOSED:
            raise ClosedError(f"load balancer for {self.service!r} is closed")
        raise NoServerAvailable(self.service, self.root)

    def _install(self, membership: Membership) -> None:
        with self._update_lock:
            self._install_locked(membership, force=False)

    def _install_locked(self, membership: Membership, *, force: bool) -> None:
        if not force and membership.version <= self._membership.version and self._picker is not None:
            return  # an older or the same snapshot: never roll back
        picker = self._strategy.build(membership) if membership.instances else None
        with self._lock:
            if picker is not None:
                picker.seed({k: n for k, n in self._in_flight.items() if k in membership.by_id})
            # Forget stats of instances that left; counts of in-flight leases stay until released.
            for key in [k for k in self._stats if k not in membership.by_id]:
                del self._stats[key]
            self._membership = membership
            self._picker = picker
            self._pick = picker.pick if picker is not None else self._empty
            # Optional on pickers: pick + acquired() fused, for those that track load.
            self._acquire_pick = getattr(picker, "acquire_pick", None) if picker is not None else None
        with self._installed:
            self._installed.notify_all()

    def _release(
        self,
        server: ServiceInstance,
        success: bool,
        latency: float | None,
        counted: bool = True,
        record: bool = True,
    ) -> None:
        """End one in-flight request (``counted``) and/or record its outcome (``record``)."""
        key = server.id
        lock = self._lock
        lock.acquire()
        try:
            if counted:
                counts = self._in_flight
                count = counts.get(key, 0)
                if count > 1:
                    counts[key] = count - 1
                elif count == 1:
                    del counts[key]
                else:
                    return  # never counted (cannot happen through Lease); never drive a count negative
            picker = self._picker
            if not record:
                if picker is not None and picker.tracks_load:
                    picker.released(server, success, 0.0)
                return
            stats = self._stats.get(key)
            if stats is None:
                if key not in self._membership.by_id:
                    return  # the instance left the pool while the request ran
                stats = self._stats[key] = StatsRecorder()
            # The statistics update, written out here: a call frame is a tenth of this path's cost.
            stats.requests += 1
            if success:
                stats.consecutive_failures = 0
            else:
                stats.failures += 1
                stats.consecutive_failures += 1
            if latency is not None:
                stats.last_latency = latency
                ewma = stats.latency_ewma
                stats.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)
            if counted and picker is not None and picker.tracks_load:
                picker.released(server, success, latency or 0.0)
        finally:
            lock.release()

    def __repr__(self) -> str:
        m = self._membership
        return (
            f"<LoadBalancer {self.root}/{self.service} {self._state.value} strategy={self._strategy.name} "
            f"instances={len(m)}>"
        )


_EMPTY_STATS = StatsRecorder()


def _names(server: str | ServiceInstance | Registration, registration: Registration) -> bool:
    """Whether ``server`` (a registration, instance, id or URL) refers to ``registration``."""
    if server is registration:
        return True
    inst = registration.instance
    if isinstance(server, ServiceInstance):
        return server.id == inst.id
    return server in (inst.id, inst.url)
