"""zklb.connect: one session and a bounded set of threads for any number of services."""

from __future__ import annotations

import asyncio
import threading

from kazoo.client import KazooClient

import zklb
from zklb import ClosedError, Discovery
from zklb.testing import wait_until


def _new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Live threads that were not there ``before`` (threads of earlier tests may still be ending)."""
    return {t for t in threading.enumerate() if t.is_alive() and t not in before}


def _starts_done(before: set[threading.Thread]) -> bool:
    """No start of this test's is still running (its short-lived threads are gone)."""
    starting = ("zklb-start", "zklb-connect")
    return not any(t.name.startswith(starting) for t in _new_threads(before))


def test_balancer_watcher_and_registry_share_one_session(zk_hosts: str, service: str) -> None:
    with zklb.connect(zk_hosts) as zk:
        lb = zk.balancer(service).start()
        watcher = zk.watcher(service).start()
        registration = zk.register(service, "http://10.0.0.7:8080", weight=2)
        assert lb.wait_for(lambda m: registration.instance.id in m.by_id, 10)
        assert watcher.wait_for(lambda m: len(m) == 1, 10)
        assert lb.get_server().url == "http://10.0.0.7:8080"
        client = zk._handle.peek()
        assert client is not None
        assert lb._watcher is not None and lb._watcher._client is client
        assert watcher._client is client
        assert zk.registry._client is client


def test_twenty_services_one_session_and_threads_that_do_not_grow(zk_hosts: str, service: str) -> None:
    before = set(threading.enumerate())
    with zklb.connect(zk_hosts) as zk:
        one = zk.balancer(f"{service}-0").start()
        wait_until(lambda: _starts_done(before), 10)
        with_one = _new_threads(before)
        balancers = [one] + [zk.balancer(f"{service}-{i}").start() for i in range(1, 20)]
        wait_until(lambda: _starts_done(before), 10)
        with_twenty = _new_threads(before)
        clients = [lb._watcher._client for lb in balancers if lb._watcher is not None]
        sessions = {client.client_id[0] for client in clients if client is not None}
        print(f"\n[20 services, one Discovery] threads: +{len(with_twenty)}; sessions: {len(sessions)}")
        assert len(sessions) == 1
        assert with_twenty == with_one  # the 19 more services cost no thread
        assert len(with_twenty) <= 6  # kazoo's connection and handler threads, and one zklb worker
    # Closing the Discovery takes every thread it made with it.
    wait_until(lambda: not _new_threads(before), 10, "threads back to what they were")


def test_close_ends_the_session_and_everything_made(zk: KazooClient, zk_hosts: str, service: str) -> None:
    discovery = zklb.connect(zk_hosts).start()
    lb = discovery.balancer(service).start()
    registration = discovery.register(service, "http://10.0.0.8:8080")
    assert lb.wait_for(lambda m: len(m) == 1, 10)
    discovery.close()
    assert discovery.closed and registration.closed
    assert lb._state.value == "closed"
    zk.sync(registration.path)
    assert zk.exists(registration.path) is None  # the session ended with the client: no wait for a delete
    discovery.close()  # idempotent
    for make in (lambda: discovery.balancer(service), lambda: discovery.register(service, "http://a:1")):
        try:
            make()
        except ClosedError:
            pass
        else:
            raise AssertionError("a closed Discovery made something")


def test_async_with_and_aregister(zk: KazooClient, zk_hosts: str, service: str) -> None:
    async def main() -> str:
        async with zklb.connect(zk_hosts) as discovery:
            assert isinstance(discovery, Discovery)
            registration = await discovery.aregister(service, "http://10.0.0.9:8080")
            async with discovery.balancer(service) as lb:
                assert lb.wait_for(lambda m: len(m) == 1, 10)
                return registration.path

    path = asyncio.run(main())
    zk.sync(path)
    assert zk.exists(path) is None


def test_kazoo_options_reach_the_client(zk_hosts: str) -> None:
    with zklb.connect(zk_hosts, timeout=7.0, read_only=True) as discovery:
        client = discovery._handle.peek()
        assert client is not None
        assert client._session_timeout == 7000
        assert client.read_only is True
