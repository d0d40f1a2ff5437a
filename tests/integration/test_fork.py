"""Fork safety with real os.fork(): a child never uses (nor ends) the parent's ZooKeeper session.

Each test forks the test process itself; the child runs a function and sends its findings back through
a pipe as JSON, then leaves with os._exit (no pytest teardown in the child). A child that does not
report within its deadline is killed and the test fails.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

import zklb
from zklb import ForkError, LoadBalancer, Registry, ServiceWatcher
from zklb.testing import ZooKeeperEnsemble, wait_until

Report = dict[str, Any]

CHILD_DEADLINE = 30.0


def in_child(
    body: Callable[[], Report],
    parent_action: Callable[[], object] | None = None,
    deadline: float = CHILD_DEADLINE,
) -> Report:
    """Fork; run ``body`` in the child and return what it reported (its exception as ``error``).

    ``parent_action()``, if given, runs in the parent just after the fork, while the child runs.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            report = body()
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        os._exit(0)
    os.close(write_end)
    if parent_action is not None:
        try:
            parent_action()
        except BaseException:
            os.close(read_end)
            _kill(pid)
            raise
    return _collect(pid, read_end, deadline)


def _collect(pid: int, read_end: int, deadline: float) -> Report:
    end = time.monotonic() + deadline
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(end - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"the child did not report within {deadline:g} s (hung?)")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the child reported but did not exit")
    finally:
        os.close(read_end)
        _kill(pid)
    report: Report = json.loads(b"".join(chunks))
    return report


def _kill(pid: int) -> None:
    """Make sure the child is gone (it has exited already unless the test failed)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def session_of(client: KazooClient | None) -> int:
    assert client is not None and client.client_id is not None
    return int(client.client_id[0])


def owner(zk: KazooClient, path: str) -> int | None:
    zk.sync(path)
    stat = zk.exists(path)
    return None if stat is None else int(stat.ephemeralOwner)


@pytest.fixture
def registry(zk_hosts: str) -> Iterator[Registry]:
    with Registry(zk_hosts) as reg:
        yield reg


def test_owned_balancer_serves_its_pool_then_follows_a_new_session(
    zk_hosts: str, service: str, registry: Registry
) -> None:
    registry.register(service, "http://10.1.0.1:80", id="before")
    lb = LoadBalancer(zk_hosts, service).start()
    assert lb.wait_for(lambda m: "before" in m.by_id, 10)
    assert lb._watcher is not None
    parent_session = session_of(lb._watcher._client)

    def child() -> Report:
        began = time.monotonic()
        first = lb.get_server().id  # the inherited pool, at once: no waiting for ZooKeeper
        took = time.monotonic() - began
        saw_after = lb.wait_for(lambda m: "after" in m.by_id, 20)
        watcher = lb._watcher
        session = session_of(watcher._client) if watcher is not None else None
        picks = sorted({lb.get_server().id for _ in range(10)})
        lb.close()
        return {"first": first, "took": took, "saw_after": saw_after, "session": session, "picks": picks}

    # Registered while the child runs: only a child following a live session of its own can see it.
    report = in_child(child, lambda: registry.register(service, "http://10.1.0.2:80", id="after"))
    assert "error" not in report, report
    assert report["first"] == "before" and report["took"] < 0.5
    assert report["saw_after"] and report["picks"] == ["after", "before"]
    assert report["session"] not in (None, parent_session)
    # The parent's balancer goes on, on its own session, unharmed by the child's close.
    assert session_of(lb._watcher._client) == parent_session
    registry.register(service, "http://10.1.0.3:80", id="later")
    assert lb.wait_for(lambda m: "later" in m.by_id, 10)
    lb.close()


def test_registrations_made_before_the_fork_stay_the_parents(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    registry = Registry(zk_hosts)
    registration = registry.register(service, "http://10.1.1.1:80", weight=3, id="parents")
    parent_session = owner(zk, registration.path)
    assert parent_session

    def child() -> Report:
        report: Report = {}
        try:
            registration.update(weight=5)
        except ForkError as exc:
            report["update"] = str(exc)
        began = time.monotonic()
        registration.close()  # the parent's: nothing to do here, and no I/O on its session
        report["closed"] = registration.closed
        mine = registry.register(service, "http://10.1.1.2:80", id="childs")  # a session of its own
        report["mine"] = mine.path
        registry.close()
        report["close_took"] = time.monotonic() - began
        return report

    report = in_child(child)
    assert "error" not in report, report
    assert "belongs to the parent process" in report["update"]
    assert report["closed"] and report["close_took"] < 5
    # The child closed and exited: the parent's znode is there, same owner, same data.
    assert owner(zk, registration.path) == parent_session
    data, _ = zk.get(registration.path)
    assert json.loads(data)["payload"]["metadata"]["weight"] == "3"
    assert owner(zk, report["mine"]) is None  # the child's own went with its session
    # And the parent's registry still maintains it.
    assert registration.update(weight=7)
    registry.close()
    assert owner(zk, registration.path) is None


def test_borrowed_client_raises_fork_error_in_the_child(
    zk_hosts: str, service: str, registry: Registry
) -> None:
    registry.register(service, "http://10.1.2.1:80")
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=30)
    try:
        lb = LoadBalancer(client, service).start()
        watcher = ServiceWatcher(client, service).start()
        assert lb.wait_for(lambda m: len(m) == 1, 10)

        def child() -> Report:
            report: Report = {}
            for name, use in (
                ("get_server", lb.get_server),
                ("acquire", lb.acquire),
                ("membership", lambda: watcher.membership),
                ("register", lambda: Registry(client).register(service, "http://10.1.2.2:80")),
            ):
                try:
                    use()
                    report[name] = "no error"
                except ForkError as exc:
                    report[name] = str(exc)
            began = time.monotonic()
            lb.close()
            watcher.close()
            report["close_took"] = time.monotonic() - began
            return report

        report = in_child(child)
        assert "error" not in report, report
        for name in ("get_server", "acquire", "membership", "register"):
            assert "make it after the fork, or pass a hosts string" in report[name], (name, report)
        assert report["close_took"] < 2
        # The parent's session and balancer are untouched.
        assert client.connected
        assert lb.get_server().url == "http://10.1.2.1:80"
        lb.close()
        watcher.close()
    finally:
        client.stop()
        client.close()


def test_discovery_reconnects_in_the_child_and_what_it_made_follows(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    discovery = zklb.connect(zk_hosts).start()
    lb = discovery.balancer(service).start()
    parents = discovery.register(service, "http://10.1.3.1:80", id="parents")
    assert lb.wait_for(lambda m: "parents" in m.by_id, 10)
    parent_session = owner(zk, parents.path)

    def child() -> Report:
        saw = lb.wait_for(lambda m: "after" in m.by_id, 20)
        mine = discovery.register(service, "http://10.1.3.2:80", id="childs")
        client = discovery._handle.peek()
        report = {"saw_after": saw, "mine": mine.path, "session": session_of(client)}
        discovery.close()
        return report

    report = in_child(child, lambda: discovery.register(service, "http://10.1.3.3:80", id="after"))
    assert "error" not in report, report
    assert report["saw_after"]
    assert report["session"] != parent_session
    assert owner(zk, parents.path) == parent_session
    assert owner(zk, report["mine"]) is None
    assert lb.wait_for(lambda m: m.by_id.keys() == {"parents", "after"}, 10)
    discovery.close()


def test_a_fork_while_zookeeper_is_unreachable_does_not_hang_the_child(service: str) -> None:
    with ZooKeeperEnsemble(size=1) as standalone, Registry(standalone.hosts) as registry:
        registry.register(service, "http://10.1.4.1:80", id="known")
        discovery = zklb.connect(standalone.hosts, start_timeout=1.0).start()
        lb = discovery.balancer(service).start()
        assert lb.wait_for(lambda m: "known" in m.by_id, 10)
        standalone.stop_all()
        wait_until(lambda: lb.pool_stats().connection != "connected", 20, "the parent losing ZooKeeper")

        def child() -> Report:
            began = time.monotonic()
            first = lb.get_server().id
            stats = lb.pool_stats()
            try:
                discovery.start()  # the inherited Discovery: a new session, which cannot come up
                started = "started"
            except zklb.RegistryError:
                started = "RegistryError"
            discovery.close()
            return {
                "first": first,
                "connection": stats.connection,
                "started": started,
                "took": time.monotonic() - began,
            }

        report = in_child(child, deadline=20)
        assert "error" not in report, report
        assert report["first"] == "known"  # the last known pool, served while ZooKeeper is away
        assert report["connection"] != "connected"
        assert report["started"] == "RegistryError"
        assert report["took"] < 10
        discovery.close()


def test_a_fork_while_another_thread_owns_the_least_connections_counts(
    zk_hosts: str, service: str, registry: Registry
) -> None:
    """The thread that owned the picker's counts does not exist in the child: the child gets them back."""
    registry.register(service, "http://10.1.0.1:80", id="a")
    registry.register(service, "http://10.1.0.2:80", id="b")
    lb = LoadBalancer(zk_hosts, service, strategy="least_connections").start()
    assert lb.wait_for(lambda m: len(m) == 2, 10)
    busy = lb.acquire()  # one request in flight on one instance, carried into the child
    lb._owner.pop()  # as a thread of the parent does for a few hundred ns inside acquire()

    def child() -> Report:
        picks = []
        for _ in range(4):
            with lb.acquire() as server:  # would wait on the missing owner, then fail, without the fix
                picks.append(server.id)
        in_flight = {key: value.in_flight for key, value in lb.stats().items()}
        lb.close()
        return {"picks": picks, "in_flight": in_flight}

    try:
        report = in_child(child)
    finally:
        lb._owner.append(True)
    assert "error" not in report, report
    idle = "b" if busy.server.id == "a" else "a"
    assert report["picks"][0] == idle  # least connections still counts the inherited request
    assert report["in_flight"] == {busy.server.id: 1, idle: 0}
    busy.release()
    lb.close()
