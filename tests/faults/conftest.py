"""Fixtures and helpers of the fault suite: faults injected into the real 3-node ensemble of
``tests/conftest.py`` and into real HTTP backends (those of ``tests/transports/conftest.py``).

Two kinds of ZooKeeper outage are used:

- the whole ensemble stopped (``ensemble.stop_all()``), when every client must lose ZooKeeper;
- one member stopped while a client under test talks to that member only (`member_client`), an outage
  for that client alone: the other two members keep serving, so sessions keep being tracked and
  `survivor_zk` can watch what the client under test leaves in ZooKeeper. It is cheaper than a full
  outage and lets a test decide whether the session survives (outage shorter than its timeout) or not.

Every test that stops members depends on ``healthy_ensemble`` (through ``zk_hosts``), which brings the
ensemble back to full strength afterwards. Loads run in threads that stop by themselves (a stop event
and a deadline); waits are for conditions, with deadlines.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, NoNodeError, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from tests.transports.conftest import Backend, Backends, MakeBalancer, StartBackends, backends, make_lb

from zklb import LoadBalancer
from zklb.codecs.curator import CuratorCodec
from zklb.errors import InvalidInstance
from zklb.httpx import LoadBalancedTransport
from zklb.requests import LoadBalancedAdapter
from zklb.testing import ZooKeeperEnsemble, wait_until

__all__ = [
    "Backend",
    "Backends",
    "HttpLoad",
    "PickLoad",
    "StartBackends",
    "backends",
    "children",
    "decoded_urls",
    "make_lb",
    "owners",
    "stays",
    "watch_callbacks",
]

#: Errors a test's own kazoo client may see while an ensemble member it talked to goes away.
ZK_AWAY = (ConnectionLoss, OperationTimeoutError, SessionExpiredError, KazooTimeoutError)


# -- reading ZooKeeper from the test's side ------------------------------------------------------------


def _retrying(zk: KazooClient, action: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``action()`` on the test's own client, retried while that client reconnects after a fault."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except ZK_AWAY:
            if time.monotonic() >= deadline:
                raise
            wait_until(lambda: zk.connected, max(0.1, deadline - time.monotonic()), "the test's client")


def children(zk: KazooClient, path: str) -> list[str]:
    """The children of ``path`` as the leader has them (synced first); [] if ``path`` does not exist."""

    def read() -> list[str]:
        zk.sync(path)
        try:
            names: list[str] = zk.get_children(path)
        except NoNodeError:
            return []
        return sorted(names)

    result: list[str] = _retrying(zk, read)
    return result


def owners(zk: KazooClient, path: str) -> dict[str, int]:
    """Each child of ``path`` and the session that owns it (its ``ephemeralOwner``; 0: persistent)."""

    def read() -> dict[str, int]:
        zk.sync(path)
        found: dict[str, int] = {}
        try:
            names = zk.get_children(path)
        except NoNodeError:
            return found
        for name in names:
            stat = zk.exists(f"{path}/{name}")
            if stat is not None:
                found[name] = stat.ephemeralOwner
        return found

    result: dict[str, int] = _retrying(zk, read)
    return result


def decoded_urls(zk: KazooClient, service: str, root: str = "/services") -> list[str]:
    """The URL of every child of the service that decodes as an instance, one entry per znode."""

    def read() -> list[str]:
        path = f"{root}/{service}"
        zk.sync(path)
        try:
            names = zk.get_children(path)
        except NoNodeError:
            return []
        codec = CuratorCodec()
        urls = []
        for name in names:
            try:
                data, _ = zk.get(f"{path}/{name}")
            except NoNodeError:
                continue
            try:
                decoded = codec.decode(service, name, data)
            except InvalidInstance:
                continue
            if decoded is not None:
                urls.append(decoded.url)
        return sorted(urls)

    result: list[str] = _retrying(zk, read)
    return result


def stays(predicate: Callable[[], object], duration: float, what: str, *, interval: float = 0.02) -> None:
    """Assert that ``predicate`` holds now and keeps holding for ``duration`` seconds.

    For absences (no ghost, no revival): a bounded observation, failing as soon as the condition breaks.
    """
    deadline = time.monotonic() + duration
    while True:
        assert predicate(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def expire_session_id(session: tuple[int, bytes], hosts: str) -> None:
    """End a ZooKeeper session from another connection, given its id and password.

    `zklb.testing.expire_session` reads them from a connected client; this one works on a client that is
    disconnected right now (kazoo hides its ``client_id`` then), so save them before the outage.
    """
    other = KazooClient(hosts=hosts, client_id=session)
    other.start(timeout=30)
    other.stop()
    other.close()


# -- clients and addresses ---------------------------------------------------------------------------


@pytest.fixture
def dead_hosts() -> str:
    """A ZooKeeper connection string where nothing listens: ZooKeeper down, without touching the ensemble."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def member_client(healthy_ensemble: ZooKeeperEnsemble) -> Iterator[Callable[..., KazooClient]]:
    """``member_client(index=0, timeout=30.0)``: a started kazoo client that talks to that member only.

    Stopping the member is then an outage for this client alone. Stopped and closed after the test.
    """
    made: list[KazooClient] = []

    def make(index: int = 0, timeout: float = 30.0) -> KazooClient:
        client = KazooClient(
            hosts=healthy_ensemble.members[index].host,
            timeout=timeout,
            # Retry the connection at least every second: the test decides when the member is back.
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
        )
        made.append(client)
        client.start(timeout=30)
        return client

    yield make
    for client in made:
        client.stop()
        client.close()


@pytest.fixture
def survivor_zk(healthy_ensemble: ZooKeeperEnsemble) -> Iterator[KazooClient]:
    """A kazoo client on every member but member 0, to inspect ZooKeeper while member 0 is stopped."""
    hosts = ",".join(m.host for m in healthy_ensemble.members[1:])
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


def leader_first_client(ensemble: ZooKeeperEnsemble, leader: int, timeout: float = 10.0) -> KazooClient:
    """A started client connected to the leader, failing over to the others in order."""
    members = ensemble.members
    hosts = ",".join([members[leader].host] + [m.host for m in members if m.index != leader])
    client = KazooClient(hosts=hosts, timeout=timeout, randomize_hosts=False)
    client.start(timeout=30)
    return client


# -- what a component leaves behind on a kazoo client ------------------------------------------------


def watch_callbacks(client: KazooClient) -> list[tuple[str, str, object]]:
    """Every watch callback registered on ``client``: ("child"|"data", path, callback)."""
    found: list[tuple[str, str, object]] = []
    for kind, table in (("child", client._child_watchers), ("data", client._data_watchers)):
        for path, callbacks in list(table.items()):
            found.extend((kind, path, callback) for callback in list(callbacks))
    return found


def zklb_callbacks(client: KazooClient) -> list[str]:
    """State listeners and watch callbacks on ``client`` whose code lives in zklb, described."""
    left = []
    candidates = [("listener", "", cb) for cb in list(client.state_listeners)] + watch_callbacks(client)
    for kind, path, registered in candidates:
        callback = getattr(registered, "func", registered)  # a functools.partial: what it calls
        owner = getattr(callback, "__self__", callback)
        module = getattr(callback, "__module__", None) or type(owner).__module__
        if module.startswith("zklb") or type(owner).__module__.startswith("zklb"):
            left.append(f"{kind} {path} {registered!r}")
    return left


# -- load ----------------------------------------------------------------------------------------------


class PickLoad:
    """Threads that pick from a balancer (``get_server()`` and ``acquire()`` in turn) until stopped.

    Each thread stops by itself at ``deadline`` seconds. Every failed pick is recorded; every instance id
    picked is recorded under the ``phase`` current when the pick returned.
    """

    def __init__(self, lb: LoadBalancer, threads: int = 4, deadline: float = 120.0) -> None:
        self.lb = lb
        self.phase = "before"
        self.failures: list[str] = []
        self.picked: dict[str, set[str]] = {}
        self.counts: dict[str, int] = {}
        self.per_thread: list[int] = [0] * threads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + deadline
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"pick-load-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> PickLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, index: int) -> None:
        use_acquire = False
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            phase = self.phase
            try:
                if use_acquire:
                    with self.lb.acquire() as server:
                        picked = server.id
                else:
                    picked = self.lb.get_server().id
            except Exception as exc:
                with self._lock:
                    if len(self.failures) < 100:
                        self.failures.append(f"{phase}: {exc!r}")
                    else:
                        self.failures.append("...")
                        return
            else:
                with self._lock:
                    self.picked.setdefault(phase, set()).add(picked)
                    self.counts[phase] = self.counts.get(phase, 0) + 1
                    self.per_thread[index] += 1
            use_acquire = not use_acquire
            # About a thousand picks a second per thread: a load, and still room on two cores for the
            # kazoo threads whose pings keep the sessions alive.
            self._stop.wait(0.001)

    def count(self, phase: str) -> int:
        with self._lock:
            return self.counts.get(phase, 0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self._threads), "a pick thread did not stop"


class HttpLoad:
    """Threads sending GETs to ``http://<service>/`` until stopped or ``total`` GETs were sent (each
    thread also stops at ``deadline`` seconds), through zklb's HTTP integration with its default
    settings: ``via="httpx"``, one `httpx.Client` with a `LoadBalancedTransport`; ``via="requests"``, a
    `requests.Session` per thread with a `LoadBalancedAdapter` mounted. Every failed GET (an error or a
    status other than 200) is recorded."""

    def __init__(
        self,
        lb: LoadBalancer,
        threads: int = 6,
        total: int | None = None,
        *,
        deadline: float = 60.0,
        via: str = "httpx",
        path: str = "/",
    ) -> None:
        self.lb = lb
        self._path = path
        self.sent = 0
        self.ok = 0
        self.failures: list[str] = []
        self._total = total
        self._via = via
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + deadline
        self._httpx = httpx.Client(transport=LoadBalancedTransport(lb), timeout=httpx.Timeout(10.0))
        self._threads = [
            threading.Thread(target=self._run, name=f"http-load-{i}", daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> HttpLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _claim(self) -> bool:
        with self._lock:
            if self._total is not None and self.sent >= self._total:
                return False
            self.sent += 1
            return True

    def _run(self) -> None:
        url = f"http://{self.lb.service}{self._path}"
        if self._via == "httpx":
            get: Callable[[], int] = lambda: self._httpx.get(url).status_code  # noqa: E731
            session = None
        else:
            session = requests.Session()
            session.trust_env = False  # no proxy from the environment between us and 127.0.0.1
            session.mount(url, LoadBalancedAdapter(self.lb))
            get = lambda: session.get(url, timeout=10.0).status_code  # noqa: E731
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline and self._claim():
                try:
                    status = get()
                    outcome = None if status == 200 else f"status {status}"
                except Exception as exc:
                    outcome = repr(exc)
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(outcome)
        finally:
            if session is not None:
                session.close()

    def done(self) -> int:
        """GETs that finished so far."""
        with self._lock:
            return self.ok + len(self.failures)

    def wait(self, timeout: float) -> None:
        """Wait until every thread ended (its share sent, or the deadline passed)."""
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "an HTTP load thread did not end"

    def stop(self) -> None:
        self._stop.set()
        self.wait(30)
        self._httpx.close()


# -- HTTP backends behind a balancer -----------------------------------------------------------------


@pytest.fixture
def http_lb(make_lb: MakeBalancer) -> MakeBalancer:
    """``http_lb(backends, health=...)``: the transport tests' ``make_lb``: a started balancer over the
    backends, registered in ZooKeeper and in its pool (without ``health``, the default policy)."""
    return make_lb


@pytest.fixture
def restart_backend() -> Iterator[Callable[[Backend], Backend]]:
    """``restart_backend(killed)``: a new backend at the killed one's address (same URL, same instance
    id in the pool). Killed after the test."""
    started: list[Backend] = []

    def restart(killed: Backend) -> Backend:
        again = Backend(f"{killed.name}-again", port=killed.port)
        again.instance_id = killed.instance_id
        started.append(again)
        return again

    yield restart
    for backend in started:
        backend.kill()
