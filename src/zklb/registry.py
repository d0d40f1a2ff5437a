"""Registering instances: a reconciler that makes ZooKeeper hold exactly the registrations a process wants.

Rules of this module:

- The `Registry` keeps *desired state*: the registrations it holds (each with the data its znode should
  have) and *tombstones*, paths that must not stay owned by this session (closed registrations, and
  registrations whose ``register()`` gave up while a create could still reach the server). One
  reconcile pass makes ZooKeeper match: create what is missing (after a session expiry too), bring
  data up to date, delete tombstoned znodes that are ours. Callers change desired state and wait,
  with a deadline, for a pass to confirm it; they never talk to ZooKeeper themselves.
- Passes run on the client's zklb worker thread (`zklb._worker`), only while connected: after each
  reconnect, after each change, and after a failure on a timer with backoff and jitter. kazoo's
  state listener only schedules a pass.
- A znode on our path owned by another live session is never deleted: the pass logs an error naming
  both sessions and keeps retrying until that session's znode goes.
- ``register()`` returns a registration whose znode is in ZooKeeper, or raises `RegistryError` within
  its timeout; then the path is tombstoned, so a create that kazoo sends later (it queues requests
  made while disconnected) is deleted by the next pass: no ghost.
- ``close()`` takes at most one timeout in all. With an owned client, stopping it ends the session,
  which removes every ephemeral znode at once. With a borrowed one, deletes that could not be done in
  time stay tombstoned and are done on reconnect, for as long as that client lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

from kazoo.client import KazooClient
from kazoo.security import ACL

from zklb._acl import registry_acl
from zklb._aio import run_off_loop
from zklb._client import ClientHandle
from zklb._reconciler import Reconciler
from zklb._signals import install_shutdown
from zklb._zk import (
    DEFAULT_REQUEST_TIMEOUT,
    check_root,
    check_service,
    check_timeout,
    is_stopped,
)
from zklb.codecs import Codec, resolve_codec
from zklb.errors import ClosedError, RegistryError
from zklb.instance import ServiceInstance
from zklb.registration import DRAINING_STATUS, Registration

__all__ = ["DRAINING_STATUS", "Registration", "Registry"]  # the first two re-exported from zklb.registration

log = logging.getLogger("zklb.registry")


class RegisterOptions(TypedDict, total=False):
    """The keywords of `Registry.register`, for the calls that pass them on."""

    weight: int
    metadata: Mapping[str, str] | None
    id: str | None
    ssl_port: int | None
    timeout: float | None


class Registry(Reconciler):
    """Registers service instances in ZooKeeper and keeps them registered.

    ``client`` is a hosts string (``"127.0.0.1:2181"``; the registry makes, starts and stops its own kazoo
    client, with ``kazoo_options`` such as auth_data or use_ssl; None: the ``ZKLB_HOSTS`` environment
    variable) or a started `KazooClient` (never stopped here). Instances are stored with ``codec``
    (``"curator"``, x-discovery JSON, by default; ``"serverset"``, ``"dubbo"`` or a codec object) under
    ``root`` (None: ``ZKLB_ROOT``, else ``/services``). ``request_timeout`` bounds each call that
    waits for ZooKeeper (``register()``, ``update()``, ``close()``); ``rng`` makes retry jitter repeatable.

    ``auth=("digest", "user:password")`` authenticates the registry's client and creates registrations,
    and the parent znodes it makes, readable by everyone and writable and deletable by that identity
    only (``acl=`` sets another ACL); see ``docs/security.md``. A registration that ZooKeeper will not
    let this identity create, or whose existing parent lets anyone delete it, fails at once with
    `RegistryError` saying why.
    """

    def __init__(
        self,
        client: str | KazooClient | None = None,
        *,
        root: str | None = None,
        codec: str | Codec | None = "curator",
        session_timeout: float = 10.0,
        kazoo_options: Mapping[str, Any] | None = None,
        auth: tuple[str, str] | None = None,
        acl: Sequence[ACL] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        registry_root = check_root(root)
        self.codec: Codec = resolve_codec(codec)
        request_timeout = check_timeout("request_timeout", request_timeout)
        acls = registry_acl(auth, acl, client if isinstance(client, KazooClient) else None)
        if auth is not None and isinstance(client, str):
            # kazoo sends auth_data again on every reconnect, so the identity outlives session expiry.
            kazoo_options = dict(kazoo_options or {})
            kazoo_options["auth_data"] = [*kazoo_options.get("auth_data", ()), auth]
        super().__init__(
            ClientHandle(client, session_timeout=session_timeout, kazoo_options=kazoo_options),
            root=registry_root,
            acl=acls,
            request_timeout=request_timeout,
            rng=rng if rng is not None else random.Random(),
        )

    # -- public API ---------------------------------------------------------------------------------

    @property
    def acl(self) -> tuple[ACL, ...] | None:
        """The ACL registrations (and the parents this registry creates) get; None: kazoo's open default."""
        return self._acl

    def register(
        self,
        service: str,
        server: str | ServiceInstance,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        id: str | None = None,
        ssl_port: int | None = None,
        timeout: float | None = None,
    ) -> Registration:
        """Register ``server`` (a URL such as ``"http://10.0.0.2:8080"`` or a `ServiceInstance`).

        ``ssl_port``: the port where an ``http://`` server also speaks TLS, so that ``https://`` callers
        are served too (Curator's ``sslPort``; a ServerSet ``https`` endpoint). Returns once the
        ephemeral znode is in ZooKeeper. A bad URL or weight raises `InvalidInstance`
        and writes nothing; if ZooKeeper does not confirm within ``timeout`` seconds (default: the
        request timeout), `RegistryError`: no create is sent for it after that, and one already on its
        way (ZooKeeper answers a session's requests in order) is deleted once answered.
        """
        check_service(service)
        timeout = self._request_timeout if timeout is None else check_timeout("timeout", timeout)
        if isinstance(server, ServiceInstance):
            instance = server
        else:
            instance = ServiceInstance.parse(
                server, weight=weight, metadata=metadata, id=id, ssl_port=ssl_port
            )
        if instance.registered_at is None:
            # Fixed once, so that re-writing the same registration writes the same bytes.
            instance = dataclasses.replace(instance, registered_at=datetime.now(UTC))
        deadline = time.monotonic() + timeout
        self._ensure_started(timeout)
        registration = Registration(self, service, instance)
        with self._cond:
            if self._closed:
                raise ClosedError("registry is closed")
            if registration.key in self._desired:
                raise RegistryError(f"{registration.path} is already registered by this registry")
            worker = self._worker
            # Two registries on one client share its session, so ZooKeeper cannot tell their znodes
            # apart: the client's worker keeps who holds each path.
            if worker is not None and not worker.claim(registration.key, self):
                raise RegistryError(
                    f"{registration.path} is already registered by another Registry on this kazoo client"
                )
            self._desired[registration.key] = registration
            self._tombstones.pop(registration.key, None)
        self._schedule(0.0)

        def settled() -> bool:
            return registration.confirmed() or registration.closed or registration._refused

        if self._wait(settled, deadline - time.monotonic()) and not registration._refused:
            if registration.closed:
                raise ClosedError("registry closed while registering")
            log.info("registered %s at %s", instance.url, registration.path)
            return registration
        # Give up, and make sure a create still on its way to the server is undone.
        with self._cond:
            if self._desired.get(registration.key) is registration:
                del self._desired[registration.key]
            self._bury_locked(registration, self._session())
            registration._mark_closed()
            reason = registration._error or "ZooKeeper did not answer"
        self._schedule(0.0)
        if registration._refused:
            raise RegistryError(f"could not register {instance.url} at {registration.path}: {reason}")
        raise RegistryError(
            f"could not register {instance.url} at {registration.path} within {timeout:g} s: {reason}"
        )

    async def aregister(
        self, service: str, server: str | ServiceInstance, **options: Unpack[RegisterOptions]
    ) -> Registration:
        """`register` for asyncio (same keywords): the loop goes on while ZooKeeper confirms (or does not).

        If the awaiting task is cancelled, a registration that still completes is closed again.
        """
        return await run_off_loop(
            functools.partial(self.register, service, server, **options),
            f"zklb-register-{service}",
            orphan=Registration.close,
        )

    def registrations(self) -> tuple[Registration, ...]:
        """The open registrations of this registry."""
        with self._cond:
            return tuple(self._desired.values())

    def close(self, timeout: float | None = None) -> None:
        """Deregister everything and stop; at most ``timeout`` seconds (default: the request timeout) in all.

        An owned client is stopped, which ends its session and so removes every znode at once. On a
        borrowed client the deletes are made now if ZooKeeper answers in time, else on reconnect.
        """
        timeout = self._request_timeout if timeout is None else check_timeout("timeout", timeout, zero=True)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            session = self._session()
            for registration in list(self._desired.values()):
                registration._mark_closed()
                self._bury_locked(registration, session)
            self._desired.clear()
            self._cond.notify_all()
        if self._worker is None:
            self._handle.close()
            return
        client = self._client
        if self._handle.owned or (client is not None and is_stopped(client)):
            # An owned client is stopped now, and a borrowed one its owner stopped: either way the
            # session has ended (or is ending), and with it every ephemeral znode it held.
            with self._cond:
                self._tombstones.clear()
                self._orphans.clear()
            self._retire()
            self._handle.close()
            return
        self._schedule(0.0)
        if not self._wait(lambda: not (self._tombstones or self._orphans), timeout):
            with self._cond:
                pending = sorted(self._tombstones)
            log.warning("deregistration of %s deferred until ZooKeeper is back", ", ".join(pending))

    def drain(self, *, timeout: float | None = None) -> bool:
        """Take every registration out of rotation at once (see `Registration.drain`), without deleting.

        One reconcile pass writes them all. Returns True once ZooKeeper holds every one, False if it did
        not within ``timeout`` seconds (default: the request timeout); they are then written on reconnect.
        """
        timeout = self._request_timeout if timeout is None else check_timeout("timeout", timeout, zero=True)
        registrations = [r for r in self.registrations() if not r.closed]
        for registration in registrations:
            with contextlib.suppress(ClosedError):  # closed meanwhile: nothing left to drain
                registration._mark_draining()
        if self._worker is None:
            return not registrations
        self._schedule(0.0)
        if self._wait(lambda: all(r.confirmed() or r.closed for r in registrations), timeout):
            log.info("drained %d registration(s) under %s", len(registrations), self.root)
            return True
        log.warning("drain of %d registration(s) deferred until ZooKeeper is back", len(registrations))
        return False

    def close_on_signal(self, signum: int = signal.SIGTERM, *, drain: float = 5.0) -> None:
        """On ``signum``: `drain` all, wait ``drain`` seconds, `close`, then let the signal do what it does.

        The handler returns at once and the work runs on a thread of its own (the main thread keeps
        serving in-flight requests meanwhile); when it is done, the handler installed before is called,
        or, where there was none, the process ends as the signal would have ended it. A second signal
        cuts the drain short. Call it from the main thread (else `ConfigurationError`).
        """
        drain = check_timeout("drain", drain, zero=True)

        def shutdown(cut_short: threading.Event) -> None:
            if self._closed:
                return
            end = time.monotonic() + drain  # the drain period starts with the signal
            if drain > 0:
                self.drain(timeout=drain)
                cut_short.wait(max(0.0, end - time.monotonic()))
            self.close()

        install_shutdown(signum, shutdown, name=f"registry {self.root}")

    async def aclose(self, timeout: float | None = None) -> None:
        """`close` for asyncio: deregistering runs off the event loop."""
        await run_off_loop(lambda: self.close(timeout), "zklb-registry-close")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- what registrations call ----------------------------------------------------------------------

    def _apply(self, registration: Registration, timeout: float | None) -> bool:
        """Have a pass write ``registration``'s new data; True once ZooKeeper holds it."""
        timeout = self._request_timeout if timeout is None else timeout  # checked by Registration._change
        if self._worker is None:
            return False
        self._schedule(0.0)
        if self._wait(lambda: registration.confirmed() or registration.closed, timeout):
            return not registration.closed
        log.warning("update of %s deferred until ZooKeeper is back", registration.path)
        return False

    def _deregister(self, registration: Registration) -> None:
        with self._cond:
            if self._desired.get(registration.key) is not registration:
                return
            del self._desired[registration.key]
            path = self._bury_locked(registration, self._session())
        if self._worker is None:
            return
        self._schedule(0.0)
        if self._wait(lambda: path not in self._tombstones and not self._orphans, self._request_timeout):
            log.info("deregistered %s", registration.path)
        else:
            log.warning("delete of %s deferred until ZooKeeper is back", registration.path)
