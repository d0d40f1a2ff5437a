"""Registering instances: ephemeral znodes that come back by themselves after session loss.

Rules of this module:

- A `Registration` owns one ephemeral znode ``/<root>/<service>/<id>`` and remembers the data it should
  hold. ``update()`` changes that desired data first, then writes it; if ZooKeeper is away, the write
  happens when the session is back, so an update is never lost.
- kazoo's state listener only sets a flag and wakes the registry's own thread ("zklb-registry"); all
  ZooKeeper work (re-creating znodes after session expiry, pending updates and deletes) runs there,
  never on kazoo's threads.
- Re-creation handles ``NodeExistsError``: a znode already owned by this session is ours (its data is
  brought up to date); one left by another session is replaced, so there is never a duplicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

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
from zklb.errors import ClosedError, RegistryError
from zklb.instance import ServiceInstance, check_weight

__all__ = ["Registration", "Registry"]

log = logging.getLogger("zklb.registry")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Registration:
    """One registered instance: its ephemeral znode, kept present until ``close()``.

    Made by `Registry.register`; use it as a context manager or call ``close()``.
    """

    def __init__(self, registry: Registry, service: str, instance: ServiceInstance) -> None:
        self._registry = registry
        self.service = service
        self.path = join_path(registry.root, service, instance.id)
        self._instance = instance
        self._state = _State.OPEN
        # Set when the znode may not match the desired data (a write failed while ZooKeeper was away).
        self._dirty = False

    @property
    def instance(self) -> ServiceInstance:
        """The instance as it is (or will be, once ZooKeeper is reachable) in the registry."""
        return self._instance

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._state is _State.CLOSED

    def update(self, *, weight: int | None = None, metadata: Mapping[str, str] | None = None) -> None:
        """Change the weight and/or metadata of this instance in place (the same znode, ``set_data``).

        Invalid values raise `InvalidInstance` and change nothing. If ZooKeeper is unreachable the new
        data is kept and written as soon as the session is back.
        """
        if self.closed:
            raise ClosedError(f"registration {self.path} is closed")
        current = self._instance
        updated = ServiceInstance(
            id=current.id,
            host=current.host,
            port=current.port,
            scheme=current.scheme,
            weight=current.weight if weight is None else check_weight(weight),
            metadata=current.metadata if metadata is None else metadata,
            registered_at=current.registered_at,
        )
        self._instance = updated
        self._dirty = True
        self._registry._write(self)

    def close(self) -> None:
        """Delete the znode and stop maintaining it. Idempotent."""
        if self.closed:
            return
        self._state = _State.CLOSED
        self._registry._forget(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        inst = self._instance
        return f"<Registration {self.path} {inst.url} weight={inst.weight} {self._state.value}>"


class Registry:
    """Registers service instances in ZooKeeper and keeps them registered.

    ``client`` is a hosts string (``"127.0.0.1:2181"``; the registry makes, starts and stops its own kazoo
    client) or a started `KazooClient` (never stopped here). Instances are stored with ``codec``
    (Curator x-discovery JSON by default) under ``root``.
    """

    def __init__(
        self,
        client: str | KazooClient,
        *,
        root: str = "/services",
        codec: Codec | None = None,
        session_timeout: float = 10.0,
    ) -> None:
        self.root = check_root(root)
        self.codec: Codec = codec or CuratorCodec()
        self._handle = ClientHandle(client, session_timeout=session_timeout)
        self._lock = threading.Lock()
        self._registrations: dict[str, Registration] = {}
        self._pending_deletes: set[str] = set()
        self._wake = threading.Event()
        self._resync = False
        self._thread: threading.Thread | None = None
        self._client: KazooClient | None = None
        self._closed = False

    # -- public API ---------------------------------------------------------------------------------

    def register(
        self,
        service: str,
        server: str | ServiceInstance,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        id: str | None = None,
    ) -> Registration:
        """Register ``server`` (a URL such as ``"http://10.0.0.2:8080"`` or a `ServiceInstance`).

        Creates the ephemeral znode before returning. A bad URL or weight raises `InvalidInstance` and
        writes nothing; a ZooKeeper failure raises `RegistryError`.
        """
        check_service(service)
        if isinstance(server, ServiceInstance):
            instance = server
        else:
            instance = ServiceInstance.parse(server, weight=weight, metadata=metadata, id=id)
        if instance.registered_at is None:
            # Fixed once, so that re-writing the same registration writes the same bytes.
            instance = dataclasses.replace(instance, registered_at=datetime.now(UTC))
        client = self._ensure_started()
        registration = Registration(self, service, instance)
        data = self.codec.encode(service, instance)
        with self._lock:
            if registration.path in self._registrations:
                raise RegistryError(f"{registration.path} is already registered by this registry")
        try:
            bounded_retry(lambda: self._create(client, registration.path, data, adopt_foreign=False))
        except NodeExistsError as exc:
            raise RegistryError(
                f"{registration.path} is already registered by another ZooKeeper session; choose another id"
            ) from exc
        except (KazooException, *TRANSIENT_ERRORS) as exc:
            raise RegistryError(f"could not register {instance.url} at {registration.path}: {exc!r}") from exc
        with self._lock:
            self._registrations[registration.path] = registration
            self._pending_deletes.discard(registration.path)
        log.info("registered %s at %s", instance.url, registration.path)
        return registration

    def registrations(self) -> tuple[Registration, ...]:
        """The open registrations of this registry."""
        with self._lock:
            return tuple(self._registrations.values())

    def close(self) -> None:
        """Delete every registration's znode, stop the registry's thread and, if owned, the client."""
        with self._lock:
            if self._closed:
                return
            registrations = list(self._registrations.values())
        for registration in registrations:
            registration.close()
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=REQUEST_TIMEOUT)
        client = self._client
        if client is not None:
            client.remove_listener(self._on_state)
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _ensure_started(self) -> KazooClient:
        with self._lock:
            if self._closed:
                raise ClosedError("registry is closed")
            if self._client is not None:
                return self._client
        client = self._handle.get()
        with self._lock:
            if self._client is None:
                self._client = client
                client.add_listener(self._on_state)
                self._thread = threading.Thread(target=self._run, name="zklb-registry", daemon=True)
                self._thread.start()
            return self._client

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's connection thread: only flip a flag and wake our own thread. Every reconnect
        # re-checks the znodes (one read each): after an expiry they are gone and must be re-created.
        if state == KazooState.CONNECTED:
            self._resync = True
            self._wake.set()

    def _create(self, client: KazooClient, path: str, data: bytes, *, adopt_foreign: bool) -> None:
        """Create ``path`` as ours; an existing znode of this session is updated, a foreign one replaced."""
        try:
            client.create_async(path, data, ephemeral=True, makepath=True).get(timeout=REQUEST_TIMEOUT)
            return
        except NodeExistsError:
            pass
        current, stat = client.get_async(path).get(timeout=REQUEST_TIMEOUT)
        if stat.ephemeralOwner == client.client_id[0]:
            # Our own create went through before a connection loss hid the answer.
            if current != data:
                client.set_async(path, data, version=stat.version).get(timeout=REQUEST_TIMEOUT)
            return
        if not adopt_foreign:
            raise NodeExistsError()
        # Left by a session that is gone from our point of view (we registered this id ourselves).
        log.warning("replacing %s left by ZooKeeper session 0x%x", path, stat.ephemeralOwner)
        with contextlib.suppress(NoNodeError):
            client.delete_async(path, version=stat.version).get(timeout=REQUEST_TIMEOUT)
        client.create_async(path, data, ephemeral=True, makepath=True).get(timeout=REQUEST_TIMEOUT)

    def _write(self, registration: Registration) -> None:
        """Bring ``registration``'s znode to its desired data now, or leave it for the registry thread."""
        client = self._client
        if client is None:
            return
        try:
            self._ensure_registered(client, registration)
        except (KazooException, *TRANSIENT_ERRORS) as exc:
            log.warning("update of %s deferred until ZooKeeper is back: %r", registration.path, exc)
            self._wake.set()

    def _forget(self, registration: Registration) -> None:
        with self._lock:
            self._registrations.pop(registration.path, None)
        client = self._client
        if client is None:
            return
        try:
            bounded_retry(lambda: self._delete_if_ours(client, registration.path))
            log.info("deregistered %s", registration.path)
        except (KazooException, *TRANSIENT_ERRORS) as exc:
            # The znode dies with the session anyway; if the session survives, the thread deletes it.
            log.warning("delete of %s deferred until ZooKeeper is back: %r", registration.path, exc)
            with self._lock:
                self._pending_deletes.add(registration.path)
            self._wake.set()

    def _delete_if_ours(self, client: KazooClient, path: str) -> None:
        try:
            _, stat = client.get_async(path).get(timeout=REQUEST_TIMEOUT)
            if stat.ephemeralOwner == client.client_id[0]:
                client.delete_async(path, version=stat.version).get(timeout=REQUEST_TIMEOUT)
        except NoNodeError:
            pass

    def _run(self) -> None:
        """The registry thread: after each reconnect, make ZooKeeper hold what the registrations say."""
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            client = self._client
            if client is None or not client.connected:
                continue
            resync, self._resync = self._resync, False
            with self._lock:
                registrations = list(self._registrations.values())
                deletes = set(self._pending_deletes)
            failed = False
            for path in deletes:
                try:
                    bounded_retry(functools.partial(self._delete_if_ours, client, path))
                    with self._lock:
                        self._pending_deletes.discard(path)
                except (KazooException, *TRANSIENT_ERRORS):
                    failed = True
            for registration in registrations:
                if registration.closed or not (resync or registration._dirty):
                    continue
                try:
                    self._ensure_registered(client, registration)
                except (KazooException, *TRANSIENT_ERRORS) as exc:
                    log.warning("could not restore %s yet: %r", registration.path, exc)
                    failed = True
                except Exception:  # a bug must not kill the thread that keeps registrations alive
                    log.exception("unexpected error restoring %s", registration.path)
            if failed:
                # The next CONNECTED wakes us again; until then there is nothing useful to do.
                self._resync = True

    def _ensure_registered(self, client: KazooClient, registration: Registration) -> None:
        """Make the znode exist, owned by this session, holding the registration's latest data."""
        instance = registration.instance
        data = self.codec.encode(registration.service, instance)

        def attempt() -> None:
            try:
                current, stat = client.get_async(registration.path).get(timeout=REQUEST_TIMEOUT)
            except NoNodeError:
                self._create(client, registration.path, data, adopt_foreign=True)
                log.info("re-registered %s after session loss", registration.path)
                return
            if stat.ephemeralOwner != client.client_id[0]:
                self._create(client, registration.path, data, adopt_foreign=True)
            elif current != data:
                client.set_async(registration.path, data, version=stat.version).get(timeout=REQUEST_TIMEOUT)

        bounded_retry(attempt)
        if registration.instance is instance:
            registration._dirty = False
