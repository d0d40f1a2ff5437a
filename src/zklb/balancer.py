"""`LoadBalancer`: a `Pool` fed live membership by ZooKeeper, with a lifecycle that survives faults.

Rules of this module (the picking rules are `zklb._pool`'s):

- The hot path never does ZooKeeper I/O: a pick before ``start()`` starts the balancer on a background
  thread (`SharedStart`) and waits for it, with every other waiting caller, at most ``start_timeout``;
  on an event-loop thread it does not wait at all (``await astart()`` does).
- ``start()`` is all or nothing: a failed attempt closes its watcher and stops an owned client, so it
  may be tried again. ``close()`` is final: a start in progress is abandoned, its waiters get
  `ClosedError`, and nothing (a late listener call, that start) installs anything afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from kazoo.client import KazooClient

from zklb import _fork
from zklb._aio import run_off_loop, wait_attempt
from zklb._client import ClientHandle
from zklb._pool import DEFAULT_HEALTH, Pool, State
from zklb._starting import SharedStart
from zklb._zk import DEFAULT_REQUEST_TIMEOUT, check_root, check_service, check_timeout
from zklb.codecs import Codec, DubboCodec, resolve_codec
from zklb.codecs.dubbo import DUBBO_SLOW_START
from zklb.discovery import ServiceWatcher
from zklb.errors import ClosedError, ForkError, NoServerAvailable, RegistryError
from zklb.health import Connection, HealthPolicy
from zklb.instance import ServiceInstance
from zklb.lease import Lease
from zklb.membership import Membership
from zklb.registry import Registration, Registry
from zklb.selection import InstanceFilter
from zklb.slow_start import SlowStart
from zklb.strategies import Strategy

__all__ = ["Lease", "LoadBalancer"]

log = logging.getLogger("zklb.balancer")

DEFAULT_SERVICE = "default"

#: The ``client`` of `LoadBalancer.static`: no ZooKeeper at all (None means ``ZKLB_HOSTS``).
_STATIC: object = object()


class LoadBalancer(Pool):
    """Client-side load balancing over the live instances of one service registered in ZooKeeper.

    ``client`` is a hosts string (a kazoo client is made on first use and stopped by ``close()``; None:
    the ``ZKLB_HOSTS`` environment variable, else ``127.0.0.1:2181``) or a started `KazooClient`
    (shared, never stopped here); ``root`` None means ``ZKLB_ROOT``, else ``/services``.
    ``kazoo_options`` (auth_data, use_ssl, ca, ...) are handed to the kazoo client made from a hosts
    string. ``start()`` (or ``await astart()``) connects and loads the pool; a pick before that starts
    it in the background and waits up to ``start_timeout``. Many services on one session: `zklb.connect`.

    ``codec`` is the registry format: ``"curator"`` (default), ``"serverset"``, ``"dubbo"`` (with
    ``root="/dubbo"``, service ``"com.foo.DemoService"`` reads ``/dubbo/com.foo.DemoService/providers``)
    or a codec object (`zklb.codecs`). With the Dubbo codec, ``slow_start`` defaults to Dubbo's warm-up
    (`zklb.codecs.dubbo.DUBBO_SLOW_START`, each provider's own ``warmup`` from its ``timestamp``).

    ``health`` is the passive health policy (`HealthPolicy`; None turns ejection off).
    ``request_timeout`` bounds each ZooKeeper request, ``resync_delay`` the random delay of a re-sync
    after a reconnect; when every instance disappears at once, the last pool is kept ``empty_grace``
    seconds (a registrar's session expiry, re-registered within a second, must not empty the pool);
    ``clock`` (for ejection times) is injectable for tests.

    ``slow_start`` (`SlowStart`) ramps instances that join or return from ejection up to their full
    weight; ``filter`` (a callable taking a `ServiceInstance`) keeps only the instances it is true
    for; ``prefer`` (metadata such as ``{"zone": "a"}``) picks among the matching instances while one
    of them is healthy and not draining, and from the whole pool otherwise. See docs/strategies.md.

    ``get_server()`` is the hot path: O(1) for the built-in strategies, lock-free and without I/O.
    """

    __slots__ = (
        "_codec",
        "_empty_grace",
        "_handle",
        "_registry",
        "_request_timeout",
        "_resync_delay",
        "_rng",
        "_start_lock",
        "_start_timeout",
        "_starting",
        "_watcher",
    )

    def __init__(
        self,
        client: str | KazooClient | None = None,
        service: str = DEFAULT_SERVICE,
        *,
        strategy: str | Strategy = "round_robin",
        root: str | None = None,
        codec: str | Codec | None = "curator",
        session_timeout: float = 10.0,
        kazoo_options: Mapping[str, Any] | None = None,
        health: HealthPolicy | None = DEFAULT_HEALTH,
        start_timeout: float = 10.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resync_delay: float = 1.0,
        empty_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        slow_start: SlowStart | None = None,
        filter: InstanceFilter | None = None,
        prefer: Mapping[str, str] | None = None,
    ) -> None:
        codec = resolve_codec(codec)
        if slow_start is None and isinstance(codec, DubboCodec):
            slow_start = DUBBO_SLOW_START  # Dubbo's consumers always warm providers up
        super().__init__(
            check_service(service),
            check_root(root),
            strategy,
            health,
            clock,
            slow_start=slow_start,
            filter=filter,
            prefer=prefer,
        )
        self._codec = codec
        self._start_timeout = check_timeout("start_timeout", start_timeout)
        self._request_timeout = check_timeout("request_timeout", request_timeout)
        self._resync_delay = check_timeout("resync_delay", resync_delay, zero=True)
        self._empty_grace = check_timeout("empty_grace", empty_grace, zero=True)
        self._rng = rng
        static = client is _STATIC
        self._handle: ClientHandle | None = None
        if not static:
            self._handle = ClientHandle(client, session_timeout=session_timeout, kazoo_options=kazoo_options)
        self._watcher: ServiceWatcher | None = None
        self._registry: Registry | None = None
        self._starting: SharedStart | None = None
        self._start_lock = threading.Lock()
        if not static:
            self._pick = self._start_then_pick  # until started: the hot path never checks state
            _fork.track(self)

    @classmethod
    def static(
        cls,
        servers: Iterable[str | ServiceInstance],
        *,
        service: str = "static",
        strategy: str | Strategy = "round_robin",
        health: HealthPolicy | None = DEFAULT_HEALTH,
        clock: Callable[[], float] = time.monotonic,
        slow_start: SlowStart | None = None,
        filter: InstanceFilter | None = None,
        prefer: Mapping[str, str] | None = None,
    ) -> LoadBalancer:
        """A balancer over a fixed list of servers, without ZooKeeper (for tests, benchmarks, fallbacks).

        The servers are there from the start, so slow start only ramps those that return from ejection.
        """
        lb = cls(
            _STATIC,
            service,
            strategy=strategy,
            health=health,
            clock=clock,
            slow_start=slow_start,
            filter=filter,
            prefer=prefer,
        )
        instances = tuple(s if isinstance(s, ServiceInstance) else ServiceInstance.parse(s) for s in servers)
        lb._state = State.STARTED
        lb._install(Membership(service, 1, instances))
        return lb

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        """Connect, load the membership and begin following it; returns once the pool is loaded.

        A service with no instances yet is fine: the pool fills as servers register. Raises
        `RegistryError` if that takes more than ``timeout`` seconds (default ``start_timeout``); a failed
        start leaves nothing behind and may be tried again. Concurrent callers share one attempt.
        """
        limit = self._start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while (attempt := self._begin_start(max(deadline - time.monotonic(), 0.0))) is not None:
            if not attempt.wait(max(deadline - time.monotonic(), 0.0)):
                raise RegistryError(f"load balancer for {self.service!r} not started within {limit:g} s")
            if attempt.error is None or isinstance(attempt.error, ClosedError):
                self._raise_if_failed(attempt)
                return self
            # An attempt begun by someone else with a shorter timeout gave up: this caller's own
            # timeout still has time, so it tries again (a new attempt) until that runs out.
            if attempt.deadline >= deadline - 0.05:
                self._raise_if_failed(attempt)
        return self

    async def astart(self, timeout: float | None = None) -> Self:
        """`start` for asyncio: the event loop goes on while the balancer connects and loads."""
        attempt = self._begin_start(timeout)
        if attempt is not None:
            limit = self._start_timeout if timeout is None else timeout
            if not await wait_attempt(attempt, limit):
                raise RegistryError(f"load balancer for {self.service!r} not started within {limit:g} s")
            self._raise_if_failed(attempt)
        return self

    async def aclose(self) -> None:
        """`close` for asyncio: the deregistrations and the client's stop run off the event loop."""
        await run_off_loop(self.close, f"zklb-close-{self.service}")

    def close(self) -> None:
        """Remove this balancer's own registrations, stop watching and, if owned, stop the kazoo client.

        Idempotent; a closed balancer raises `ClosedError` from every pick and never starts again.
        """
        with self._start_lock:
            if self._state is State.CLOSED:
                return
            self._state = State.CLOSED
            starting, self._starting = self._starting, None
        with self._lock:
            self._fast = self._fast_ok = False
            self._pick = self._closed
        if starting is not None:
            starting.finish(ClosedError(f"load balancer for {self.service!r} was closed while starting"))
        # The watcher first: it must not see (and report) this balancer's own registrations leaving.
        if self._watcher is not None:
            self._watcher.close()
        handle, registry = self._handle, self._registry
        if handle is not None and handle.owned:
            # Stopping an owned client ends its session, which removes our znodes at once, even while
            # ZooKeeper is away; the registry then has nothing left to wait for.
            handle.close()
        if registry is not None:
            registry.close()
        if handle is not None:
            handle.close()

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
        await self.aclose()

    @property
    def started(self) -> bool:
        """True once the pool is loaded and followed (and not closed)."""
        return self._state is State.STARTED

    def _begin_start(self, timeout: float | None) -> SharedStart | None:
        """The start attempt in progress (made if none is), or None if already started."""
        with self._start_lock:
            if self._state is State.CLOSED:
                raise ClosedError(f"load balancer for {self.service!r} is closed")
            if self._state is State.STARTED:
                return None
            if self._starting is None:
                limit = self._start_timeout if timeout is None else timeout
                self._starting = SharedStart(
                    lambda: self._run_start(limit), f"zklb-start-{self.service}", time.monotonic() + limit
                )
            return self._starting

    def _raise_if_failed(self, attempt: SharedStart) -> None:
        error = attempt.error
        if error is None:
            return
        if isinstance(error, ClosedError | ForkError | RegistryError):
            raise error
        raise RegistryError(f"load balancer for {self.service!r} could not start: {error!r}") from error

    def _run_start(self, timeout: float) -> None:
        """The start itself, on the attempt's thread: all or nothing."""
        handle = self._handle
        assert handle is not None
        watcher: ServiceWatcher | None = None
        try:
            handle.get(timeout)
            watcher = ServiceWatcher(
                handle,  # a view: the watcher uses (and after a fork re-follows) this balancer's client
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
                if self._state is State.CLOSED:
                    raise ClosedError(f"load balancer for {self.service!r} was closed while starting")
                self._watcher = watcher
            self._install(watcher.membership)
            watcher.add_listener(self._install)
            with self._start_lock:
                if self._is_closed():  # re-read: close() may have run meanwhile
                    raise ClosedError(f"load balancer for {self.service!r} was closed while starting")
                # Started and its pick function installed in one step, owning the counts too: with
                # prefer= the refresh may seed a new least-connections picker.
                with self._exclusive():
                    self._state = State.STARTED
                    self._refresh_locked()
                self._starting = None
            log.info(
                "load balancer for %s started: %d instances, strategy %s",
                watcher.path,
                len(self._membership),
                self._strategy.name,
            )
        except BaseException:
            if watcher is not None:
                watcher.close()
            with self._start_lock:
                self._starting = None
                self._watcher = None if self._watcher is watcher else self._watcher
                closed = self._state is State.CLOSED
            if not closed:
                handle.reset()  # an owned client that connected but could not load: stop it too
            raise

    # -- ZooKeeper-facing calls ------------------------------------------------------------------

    def servers(self) -> tuple[ServiceInstance, ...]:
        """The instances now in the pool (ejected and draining ones included), in their stable order."""
        if self._state is not State.STARTED:
            self._ensure_started()
        return self._membership.instances

    def add_server(
        self,
        server: str | ServiceInstance,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        id: str | None = None,
        ssl_port: int | None = None,
        timeout: float = 10.0,
    ) -> Registration:
        """Register ``server`` for this service (an ephemeral znode) and wait until the pool has it.

        ``ssl_port``: the TLS port of an ``http://`` server that speaks https there too. Returns the
        `Registration` (``update()`` it, ``close()`` it). It is removed by ``close()``.
        """
        registry = self._ensure_registry()
        registration = registry.register(
            self.service, server, weight=weight, metadata=metadata, id=id, ssl_port=ssl_port
        )
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
        gone = found.instance.id
        watcher = self._watcher
        if watcher is not None:
            watcher._expect_departure(gone)  # a removal asked for here is no blip to ride out
        found.close()
        self.wait_for(lambda m: gone not in m.by_id, timeout)
        return True

    # -- internals -------------------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._handle is None:
            return "static"
        watcher = self._watcher
        return "lost" if watcher is None else watcher.connection

    def _ensure_started(self) -> None:
        """Start (shared, in the background) and wait up to ``start_timeout``; for callers of picks."""
        if self._state is State.CLOSED:
            raise ClosedError(f"load balancer for {self.service!r} is closed")
        if self._handle is None or self._state is State.STARTED:
            return
        self._handle.check()  # ForkError at once in a fork's child on a borrowed client
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
            if self._state is State.CLOSED:
                raise ClosedError(f"load balancer for {self.service!r} is closed")
            if self._registry is None:
                self._registry = Registry(
                    self._handle,  # a view, as for the watcher
                    root=self.root,
                    codec=self._codec,
                    request_timeout=self._request_timeout,
                )
            return self._registry

    def _after_fork_in_child(self) -> None:
        """Locks afresh; keep serving the last pool while the watcher re-follows (see `zklb._fork`).

        On a borrowed client nothing can follow: the balancer goes back to unstarted, so that every
        pick goes through `_ensure_started`, which raises `ForkError`.
        """
        self._update_lock = threading.Lock()
        self._lock = threading.Lock()
        self._installed = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._starting = None  # a start in progress ran on a thread this process does not have
        if self._ramp is not None:
            self._ramp.building = threading.Lock()  # held by a ramped build on another thread, maybe
        # The picker's counts may have been owned by another thread at the fork (mid-change, and that
        # thread is gone): hand them back, and rebuild them from the counters if they were held.
        held = not self._owner
        self._owner = [True]
        if held and self._picker is not None:
            self._install_locked(self._membership, force=True)
        handle = self._handle
        if handle is not None and not handle.reconnects_after_fork and self._state is State.STARTED:
            self._state = State.NEW
            self._fast = self._fast_ok = False
            self._pick = self._start_then_pick

    def _start_then_pick(self) -> ServiceInstance:
        # Installed as the pick function until the first start, so the hot path never checks state.
        self._ensure_started()
        pick = self._pick
        if pick == self._start_then_pick:
            # Started, but read between the state and the pick function it comes with (both are set in
            # one locked section): the lock gives both, and a missing one must not recurse.
            with self._lock:
                pick = self._pick
            if pick == self._start_then_pick:
                raise NoServerAvailable(self.service, self.root, "the balancer is starting")
        return pick()

    def __repr__(self) -> str:
        m = self._membership
        return (
            f"<LoadBalancer {self.root}/{self.service} {self._state.value} strategy={self._strategy.name} "
            f"instances={len(m)}>"
        )


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
