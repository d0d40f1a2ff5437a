"""`zklb.connect` and `Discovery`: one ZooKeeper session for every service a process uses.

A `LoadBalancer` made from a hosts string has a kazoo client of its own: a session and four threads
per service. A `Discovery` (Apache Curator's ``ServiceDiscovery`` in spirit) owns one client, and
everything made through it shares that client and its one zklb worker thread, so a process watching
twenty services has one session and a handful of threads.

Rules of this module:

- The Discovery owns the client; what it makes holds a *view* of its client handle (`zklb._client`): used,
  never stopped by them. After a fork the handle makes a new client in the child and the views follow.
- ``connect()`` begins connecting at once, in the background; ``start()`` / ``await astart()`` /
  ``with`` / ``async with`` wait for it (with a deadline) and raise `RegistryError` if ZooKeeper does
  not answer. Nothing waits for it otherwise: a balancer made meanwhile joins the same attempt.
- ``close()`` stops the client first, which ends the session and so removes every registration's
  znode at once, even during an outage; then it closes what it made, which has no ZooKeeper I/O left.
"""

from __future__ import annotations

import signal
import threading
import time
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from zklb import _fork
from zklb._aio import run_off_loop, wait_attempt
from zklb._client import ClientHandle
from zklb._starting import SharedStart
from zklb._zk import check_root, check_timeout
from zklb.balancer import LoadBalancer
from zklb.discovery import ServiceWatcher
from zklb.errors import ClosedError, RegistryError
from zklb.instance import ServiceInstance
from zklb.registry import RegisterOptions, Registration, Registry

__all__ = ["Discovery", "connect"]

_Made = TypeVar("_Made", LoadBalancer, ServiceWatcher)


def connect(hosts: str | None = None, *, root: str | None = None, **kazoo_options: Any) -> Discovery:
    """One ZooKeeper session for any number of services: balancers, watchers and registrations.

    ``hosts`` None means the ``ZKLB_HOSTS`` environment variable (else ``127.0.0.1:2181``), ``root``
    None ``ZKLB_ROOT`` (else ``/services``); ``kazoo_options`` go to ``KazooClient`` as they are (e.g.
    ``timeout=`` for the session timeout, ``auth_data=``, ``use_ssl=``). Connecting begins at once in
    the background; use the result as ``with zklb.connect() as zk:`` or ``async with``.
    """
    return Discovery(hosts, root=root, **kazoo_options)


class Discovery:
    """A ZooKeeper session shared by every balancer, watcher and registration made through it.

    Made by `connect`. ``balancer(service)`` and ``watcher(service)`` make a `LoadBalancer` and a
    `ServiceWatcher` on the shared client; ``register(service, url)`` registers through one `Registry`.
    ``close()`` (or leaving ``with`` / ``async with``) closes all of them and then the client.
    """

    def __init__(
        self,
        hosts: str | None = None,
        *,
        root: str | None = None,
        start_timeout: float = 10.0,
        **kazoo_options: Any,
    ) -> None:
        self.root = check_root(root)
        self._start_timeout = check_timeout("start_timeout", start_timeout)
        options = dict(kazoo_options)
        session_timeout = float(options.pop("timeout", 10.0))
        self._handle = ClientHandle(hosts, session_timeout=session_timeout, kazoo_options=options)
        self._lock = threading.Lock()
        self._made: list[LoadBalancer | ServiceWatcher] = []
        self._registry: Registry | None = None
        self._closed = False
        self._starting: SharedStart | None = None
        _fork.track(self)
        self._begin_start(self._start_timeout)

    # -- making things --------------------------------------------------------------------------

    def balancer(self, service: str, **options: Any) -> LoadBalancer:
        """A `LoadBalancer` for ``service`` on this session (``options`` as for `LoadBalancer`).

        Not started: like any balancer it starts on its first pick, or use ``with`` / ``await astart()``.
        """
        options.setdefault("root", self.root)
        return self._keep(LoadBalancer(self._handle, service, **options))

    def watcher(self, service: str, **options: Any) -> ServiceWatcher:
        """A `ServiceWatcher` for ``service`` on this session, not started (``start()`` it, or ``with``)."""
        options.setdefault("root", self.root)
        return self._keep(ServiceWatcher(self._handle, service, **options))

    @property
    def registry(self) -> Registry:
        """The one `Registry` of this session (made on first use) that ``register()`` goes through."""
        with self._lock:
            if self._closed:
                raise ClosedError("this Discovery is closed")
            if self._registry is None:
                self._registry = Registry(self._handle, root=self.root)
            return self._registry

    def register(
        self, service: str, server: str | ServiceInstance, **options: Unpack[RegisterOptions]
    ) -> Registration:
        """Register ``server`` for ``service`` on this session (keywords as for `Registry.register`)."""
        return self.registry.register(service, server, **options)

    async def aregister(
        self, service: str, server: str | ServiceInstance, **options: Unpack[RegisterOptions]
    ) -> Registration:
        """`register` for asyncio: the event loop goes on while ZooKeeper confirms."""
        return await self.registry.aregister(service, server, **options)

    def close_on_signal(self, signum: int = signal.SIGTERM, *, drain: float = 5.0) -> None:
        """On ``signum``, drain and then delete every registration of this session, then let the signal act.

        `Registry.close_on_signal` on `registry`: balancers and watchers keep working until the process
        ends, since requests still in flight during the drain may need them. Main thread only.
        """
        self.registry.close_on_signal(signum, drain=drain)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        """Wait until the session is up; `RegistryError` if ZooKeeper does not answer within ``timeout``.

        A failed start may be tried again (a new attempt); `ClosedError` if closed meanwhile.
        """
        limit = self._start_timeout if timeout is None else check_timeout("timeout", timeout)
        attempt = self._begin_start(limit)
        if not attempt.wait(limit):
            raise RegistryError(f"could not connect to ZooKeeper within {limit:g} s")
        self._raise_if_failed(attempt)
        return self

    async def astart(self, timeout: float | None = None) -> Self:
        """`start` for asyncio: the event loop goes on while the session comes up."""
        limit = self._start_timeout if timeout is None else check_timeout("timeout", timeout)
        attempt = self._begin_start(limit)
        if not await wait_attempt(attempt, limit):
            raise RegistryError(f"could not connect to ZooKeeper within {limit:g} s")
        self._raise_if_failed(attempt)
        return self

    def close(self) -> None:
        """Close the client (ending the session, and with it every registration) and all made here.

        Idempotent; a start in progress is abandoned and its waiters get `ClosedError` at once.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            starting, self._starting = self._starting, None
            made, self._made = self._made, []
            registry = self._registry
        if starting is not None:
            starting.finish(ClosedError("this Discovery was closed while connecting"))
        self._handle.close()
        for component in made:
            component.close()
        if registry is not None:
            registry.close()

    async def aclose(self) -> None:
        """`close` for asyncio: stopping the client and the rest runs off the event loop."""
        await run_off_loop(self.close, "zklb-discovery-close")

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        try:
            return await self.astart()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Discovery {self.root} {state} components={len(self._made)}>"

    # -- internals ------------------------------------------------------------------------------

    def _keep(self, component: _Made) -> _Made:
        with self._lock:
            if not self._closed:
                # Closed ones need no closing later: forget them, so that the list stays short.
                self._made = [c for c in self._made if not _is_closed(c)]
                self._made.append(component)
                return component
        component.close()
        raise ClosedError("this Discovery is closed")

    def _begin_start(self, timeout: float) -> SharedStart:
        """The connect attempt in progress, or a new one if none is (or the last one failed)."""
        with self._lock:
            if self._closed:
                raise ClosedError("this Discovery is closed")
            attempt = self._starting
            if attempt is None or (attempt.wait(0) and attempt.error is not None):
                handle = self._handle
                attempt = self._starting = SharedStart(
                    lambda: _connect(handle, timeout), "zklb-connect", time.monotonic() + timeout
                )
            return attempt

    def _raise_if_failed(self, attempt: SharedStart) -> None:
        error = attempt.error
        if error is None:
            return
        if isinstance(error, ClosedError | RegistryError):
            raise error
        raise RegistryError(f"could not connect to ZooKeeper: {error!r}") from error

    def _after_fork_in_child(self) -> None:
        """A fresh lock; the connect attempt ran on a thread this process does not have."""
        self._lock = threading.Lock()
        self._starting = None


def _connect(handle: ClientHandle, timeout: float) -> None:
    handle.get(timeout)


def _is_closed(component: LoadBalancer | ServiceWatcher) -> bool:
    return bool(component._state.value == "closed")
