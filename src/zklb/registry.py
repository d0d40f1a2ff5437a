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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent
from kazoo.security import ACL

from zklb import _fork
from zklb._acl import Refused, create_ephemeral, registry_acl
from zklb._aio import run_off_loop
from zklb._client import ClientHandle
from zklb._signals import install_shutdown
from zklb._worker import ClientWorker, Job
from zklb._zk import (
    DEFAULT_REQUEST_TIMEOUT,
    TRANSIENT_ERRORS,
    check_root,
    check_service,
    check_timeout,
    drop_watches,
    is_stopped,
    session_id,
)
from zklb.codecs import Codec, resolve_codec
from zklb.errors import ClosedError, RegistryError
from zklb.instance import ServiceInstance
from zklb.registration import DRAINING_STATUS, Registration

__all__ = ["DRAINING_STATUS", "Registration", "Registry"]  # the first two re-exported from zklb.registration

log = logging.getLogger("zklb.registry")

#: Longest wait between two reconcile attempts while ZooKeeper keeps failing a request.
MAX_BACKOFF = 5.0


class RegisterOptions(TypedDict, total=False):
    """The keywords of `Registry.register`, for the calls that pass them on."""

    weight: int
    metadata: Mapping[str, str] | None
    id: str | None
    ssl_port: int | None
    timeout: float | None


class Registry:
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
        self.root = check_root(root)
        self.codec: Codec = resolve_codec(codec)
        self._request_timeout = check_timeout("request_timeout", request_timeout)
        self._rng = rng if rng is not None else random.Random()
        self._acl = registry_acl(auth, acl, client if isinstance(client, KazooClient) else None)
        if auth is not None and isinstance(client, str):
            # kazoo sends auth_data again on every reconnect, so the identity outlives session expiry.
            kazoo_options = dict(kazoo_options or {})
            kazoo_options["auth_data"] = [*kazoo_options.get("auth_data", ()), auth]
        self._handle = ClientHandle(client, session_timeout=session_timeout, kazoo_options=kazoo_options)
        self._cond = threading.Condition(threading.Lock())  # guards the state below; notified per pass
        self._desired: dict[str, Registration] = {}
        # Path -> the session that may own a znode there (None: whichever session comes next).
        self._tombstones: dict[str, int | None] = {}
        # Sequential registrations given up while a create of theirs may have landed unseen: (znode
        # name prefix, data, session); a pass deletes that session's znodes with that data nobody holds.
        self._orphans: list[tuple[str, bytes, int]] = []
        self._conflicts: dict[str, int] = {}  # path -> foreign owner already logged
        self._client: KazooClient | None = None
        self._worker: ClientWorker | None = None
        self._job: Job | None = None  # the reconcile pass, on the client's worker
        self._failures = 0
        self._closed = False
        self._start_lock = threading.Lock()
        _fork.track(self)

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
        request timeout), `RegistryError`, and no znode for it appears later.
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
        timeout = self._request_timeout if timeout is None else timeout
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
        timeout = self._request_timeout if timeout is None else timeout
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

    def _bury_locked(self, registration: Registration, session: int | None) -> str:
        """Tombstone what ``registration`` may have in ZooKeeper (under ``_cond``); returns its path."""
        path = registration.path
        if not registration.sequential:
            self._tombstones[path] = session
            return path
        if registration._path is not None:
            self._tombstones[path] = session
        uncertain = registration._uncertain
        if uncertain is not None and uncertain == session:
            self._orphans.append((registration.prefix, registration._data, uncertain))
        worker = self._worker
        if worker is not None:  # the key names no znode: nothing in ZooKeeper waits on it
            worker.release(registration.key, self)
        return path

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
        ok = True
        for path in tombstones:
            ok &= self._attempt(path, functools.partial(self._delete_if_ours, client, session, path), None)
        for orphan in orphans:
            sweep = functools.partial(self._sweep_orphan, client, session, orphan)
            ok &= self._attempt(orphan[0], sweep, None)
        for registration in pending:
            data = registration._data
            ensure = functools.partial(self._ensure, client, session, registration, data)
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
        except _Conflict as conflict:
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

    def _ensure(self, client: KazooClient, session: int, registration: Registration, data: bytes) -> None:
        """Make the registration's znode exist, owned by ``session``, holding ``data`` (and watched)."""
        if registration.sequential:
            self._ensure_sequential(client, session, registration, data)
            return
        timeout = self._request_timeout
        path = registration.path
        for _ in range(4):  # read, write (create or set), read back; once more if it raced another writer
            try:
                current, stat = client.get_async(path, watch=self._on_znode).get(timeout=timeout)
            except NoNodeError:
                if not self._still_desired(registration):
                    return  # given up or closed while this pass was waiting: create nothing
                try:
                    create_ephemeral(client, path, data, self._acl, timeout)
                    self._conflicts.pop(path, None)
                    continue  # read it back: that arms the watch on our own znode
                except NodeExistsError:
                    continue
            if stat.ephemeralOwner != session:
                self._conflict(path, stat.ephemeralOwner, session)  # watched: its deletion wakes us
            if self._up_to_date(client, registration, path, current=current, version=stat.version, data=data):
                return
            # Read it back either way: the write fired (used up) the watch the first read set.
        raise RegistryError(f"{path} kept changing while being registered")

    def _ensure_sequential(
        self, client: KazooClient, session: int, registration: Registration, data: bytes
    ) -> None:
        """`_ensure` for a sequential registration, whose znode name ZooKeeper picks at each create.

        The znode it holds is read (which arms the watch) and brought up to date; if it is gone (a
        session expiry, a delete) a new one is created, under a new name. A create that failed in a
        way that may still have landed (a timeout, a lost connection) leaves ``_uncertain`` set: before
        creating again, the pass looks for that znode (ours, with our data, held by no one) and adopts it.
        """
        timeout = self._request_timeout
        for _ in range(4):
            path = registration._path
            if path is None:
                if not self._still_desired(registration):
                    return
                found = self._find_uncreated(client, session, registration, data)
                if found is None:
                    registration._uncertain = session  # from here until the create answers
                    found = create_ephemeral(
                        client, registration.prefix, data, self._acl, timeout, sequence=True
                    )
                registration._created(found)
                with self._cond:
                    if self._desired.get(registration.key) is not registration:
                        self._tombstones[found] = session  # given up while it was being created
                        return
                continue  # read it back: that arms the watch
            try:
                current, stat = client.get_async(path, watch=self._on_znode).get(timeout=timeout)
            except NoNodeError:
                registration._forget_znode()
                continue
            if stat.ephemeralOwner != session:
                registration._forget_znode()  # an earlier session's, and that session is over
                continue
            if self._up_to_date(client, registration, path, current=current, version=stat.version, data=data):
                return
        raise RegistryError(f"{registration.prefix} kept changing while being registered")

    def _up_to_date(
        self,
        client: KazooClient,
        registration: Registration,
        path: str,
        *,
        current: bytes,
        version: int,
        data: bytes,
    ) -> bool:
        """True if ``path`` (read at ``version``) needs no write; else write ``data`` there (False: read
        it back, as the write may have raced another one)."""
        if current == data or not self._still_desired(registration):
            return True
        try:
            client.set_async(path, data, version=version).get(timeout=self._request_timeout)
        except (BadVersionError, NoNodeError):
            pass
        return False

    def _find_uncreated(
        self, client: KazooClient, session: int, registration: Registration, data: bytes
    ) -> str | None:
        """The znode an uncertain create of ``registration`` made in this session, if it landed."""
        if registration._uncertain != session:
            return None
        with self._cond:
            held = {r._path for r in self._desired.values()}
        for path in self._session_znodes(client, session, registration.prefix, data):
            if path not in held:
                return path
        return None

    def _session_znodes(self, client: KazooClient, session: int, prefix: str, data: bytes) -> list[str]:
        """The znodes named ``prefix<sequence>`` that ``session`` owns and that hold ``data``."""
        timeout = self._request_timeout
        parent, _, stem = prefix.rpartition("/")
        try:
            names = client.get_children_async(parent or "/").get(timeout=timeout)
        except NoNodeError:
            return []
        paths = [f"{parent}/{name}" for name in sorted(names) if name.startswith(stem)]
        pending = [(path, client.get_async(path)) for path in paths]
        found = []
        for path, result in pending:
            try:
                current, stat = result.get(timeout=timeout)
            except NoNodeError:
                continue
            if stat.ephemeralOwner == session and current == data:
                found.append(path)
        return found

    def _sweep_orphan(self, client: KazooClient, session: int, orphan: tuple[str, bytes, int]) -> None:
        """Delete the znodes a given-up sequential registration's lost create may have made."""
        prefix, data, _ = orphan
        with self._cond:
            held = {r._path for r in self._desired.values()}
        for path in self._session_znodes(client, session, prefix, data):
            if path not in held:
                try:
                    client.delete_async(path).get(timeout=self._request_timeout)
                except NoNodeError:
                    pass
        with self._cond:
            if orphan in self._orphans:
                self._orphans.remove(orphan)

    def _still_desired(self, registration: Registration) -> bool:
        with self._cond:
            return self._desired.get(registration.key) is registration

    def _conflict(self, path: str, owner: int, session: int) -> None:
        message = (
            f"{path} is held by another ZooKeeper session 0x{owner:x} (this one is 0x{session:x}); "
            "zklb never deletes another session's znode and retries until it goes"
        )
        if self._conflicts.get(path) != owner:
            self._conflicts[path] = owner
            log.error("registry: %s", message)
        raise _Conflict(message)

    def _delete_if_ours(self, client: KazooClient, session: int, path: str) -> None:
        timeout = self._request_timeout
        try:
            _, stat = client.get_async(path).get(timeout=timeout)
            if stat.ephemeralOwner == session:
                client.delete_async(path, version=stat.version).get(timeout=timeout)
        except NoNodeError:
            pass
        with self._cond:
            if self._tombstones.get(path, session) in (None, session):
                self._tombstones.pop(path, None)
                worker = self._worker
                if worker is not None and path not in self._desired:
                    worker.release(path, self)


class _Conflict(Exception):
    """Our path is held by another live session: retried, never forced."""
