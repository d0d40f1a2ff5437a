"""ServiceWatcher against a real ZooKeeper ensemble."""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import pytest
from kazoo.client import KazooClient

from zklb import Membership, Registry, RegistryError, ServiceWatcher
from zklb.codecs.curator import CuratorCodec
from zklb.instance import ServiceInstance
from zklb.testing import ZooKeeperEnsemble, expire_session, wait_until


def urls(m: Membership) -> set[str]:
    return {inst.url for inst in m.instances}


def test_starts_on_a_service_that_does_not_exist_yet(zk: KazooClient, zk_hosts: str, service: str) -> None:
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert len(watcher.membership) == 0
        with Registry(zk) as registry:
            registry.register(service, "http://10.0.0.1:80")
            assert watcher.wait_for(lambda m: urls(m) == {"http://10.0.0.1:80"}, 10)


def test_listeners_get_growing_versions_off_kazoos_thread(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    seen: list[tuple[int, int, str]] = []
    done = threading.Event()

    def listener(m: Membership) -> None:
        seen.append((m.version, len(m), threading.current_thread().name))
        if len(m) == 3:
            done.set()

    with ServiceWatcher(zk_hosts, service) as watcher, Registry(zk) as registry:
        watcher.add_listener(listener)
        for port in (81, 82, 83):
            registry.register(service, f"http://10.0.0.1:{port}")
        assert done.wait(10)
    versions = [v for v, _, _ in seen]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    # The first call comes from add_listener itself; every later one from the client.s zklb worker.
    assert all(name.startswith("zklb-worker-") for _, _, name in seen[1:])


def test_a_listener_that_raises_does_not_stop_the_watcher(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    def bad(m: Membership) -> None:
        raise RuntimeError("boom")

    with ServiceWatcher(zk_hosts, service) as watcher, Registry(zk) as registry:
        watcher.add_listener(bad)
        registry.register(service, "http://10.0.0.1:81")
        registry.register(service, "http://10.0.0.1:82")
        assert watcher.wait_for(lambda m: len(m) == 2, 10)


def test_survives_deletion_and_recreation_of_the_service_path(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    path = f"/services/{service}"
    with ServiceWatcher(zk_hosts, service, empty_grace=0) as watcher:
        reg_a = Registry(zk)
        reg_a.register(service, "http://10.0.0.1:81")
        assert watcher.wait_for(lambda m: len(m) == 1, 10)
        reg_a.close()
        zk.delete(path, recursive=True)
        assert watcher.wait_for(lambda m: len(m) == 0, 10)
        assert zk.exists(path) is None
        with Registry(zk) as reg_b:
            reg_b.register(service, "http://10.0.0.2:82")
            assert watcher.wait_for(lambda m: urls(m) == {"http://10.0.0.2:82"}, 10)
            before = watcher.membership.version
            zk.delete(path, recursive=True)  # reg_b is still open: its registry puts its znode back
            assert watcher.wait_for(lambda m: m.version > before and urls(m) == {"http://10.0.0.2:82"}, 10)
            inst = ServiceInstance.parse("http://10.0.0.3:83")
            zk.create(f"{path}/{inst.id}", CuratorCodec().encode(service, inst), makepath=True)
            assert watcher.wait_for(lambda m: urls(m) == {"http://10.0.0.2:82", "http://10.0.0.3:83"}, 10)


def test_a_pool_emptied_at_once_is_kept_for_empty_grace(zk: KazooClient, zk_hosts: str, service: str) -> None:
    registrar = KazooClient(hosts=zk_hosts, timeout=4.0)
    registrar.start(timeout=10)
    sizes: list[int] = []
    try:
        with ServiceWatcher(zk_hosts, service, empty_grace=1.5) as watcher:
            registry = Registry(registrar)
            regs = [registry.register(service, f"http://10.0.0.1:{port}") for port in (81, 82)]
            assert watcher.wait_for(lambda m: len(m) == 2, 10)
            watcher.add_listener(lambda m: sizes.append(len(m)))
            # The registrar's session expires: both znodes go at once and come back under a new session.
            old = registrar.client_id[0]
            expire_session(registrar, zk_hosts)
            wait_until(lambda: registrar.connected and registrar.client_id[0] != old, 30, "a new session")

            def restored() -> bool:
                zk.sync(f"/services/{service}")
                return all(zk.exists(r.path) is not None for r in regs)

            wait_until(restored, 30, "the registrations re-created")
            assert len(watcher.membership) == 2
            # Never empty, and never only the first of the re-created two (which would take all the load).
            assert all(size == 2 for size in sizes), sizes
            # A real departure of everything: published once the grace is over, not before.
            registry.close()
            gone = time.monotonic()
            assert watcher.wait_for(lambda m: len(m) == 0, 10)
            assert time.monotonic() - gone >= 1.0
    finally:
        registrar.stop()
        registrar.close()


def test_malformed_children_are_skipped_with_one_warning_each(
    zk: KazooClient, zk_hosts: str, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/services/{service}"
    good = ServiceInstance.parse("http://10.0.0.1:80", id="good")
    codec = CuratorCodec()
    zk.create(f"{path}/good", codec.encode(service, good), makepath=True)
    bad = {
        "not-json": b"{nope",
        "no-address": json.dumps({"port": 80}).encode(),
        "bad-port": json.dumps({"address": "h", "port": 70000}).encode(),
        "zero-weight": json.dumps(
            {"address": "h", "port": 80, "payload": {"metadata": {"weight": "0"}}}
        ).encode(),
        "nan-weight": json.dumps(
            {"address": "h", "port": 80, "payload": {"metadata": {"weight": "NaN"}}}
        ).encode(),
        "huge": json.dumps({"address": "h", "port": 80, "pad": "x" * 70_000}).encode(),
        "bad-scheme": json.dumps(
            {"address": "h", "port": 80, "payload": {"metadata": {"scheme": "ftp"}}}
        ).encode(),
    }
    for name, data in bad.items():
        zk.create(f"{path}/{name}", data)
    caplog.set_level(logging.WARNING, logger="zklb")
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert [i.id for i in watcher.membership.instances] == ["good"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for name in bad:
            matching = [w for w in warnings if f"{path}/{name}:" in w]
            assert len(matching) == 1, (name, warnings)
        # The watcher still works: a valid newcomer is served, a fixed child is picked up.
        later = ServiceInstance.parse("http://10.0.0.2:80", id="later")
        zk.create(f"{path}/later", codec.encode(service, later))
        fixed = ServiceInstance.parse("http://10.0.0.3:80", id="not-json")
        zk.set(f"{path}/not-json", codec.encode(service, fixed))
        assert watcher.wait_for(lambda m: {i.id for i in m.instances} == {"good", "later", "not-json"}, 10)


def test_a_join_costs_constant_reads_not_a_reread_of_every_instance(zk: KazooClient, service: str) -> None:
    path = f"/services/{service}"
    codec = CuratorCodec()
    zk.create(path, makepath=True)
    results = []
    for i in range(300):
        inst = ServiceInstance.parse(f"http://10.0.{i // 250}.{i % 250 + 1}:80", id=f"n{i:04d}")
        results.append(zk.create_async(f"{path}/{inst.id}", codec.encode(service, inst)))
    for r in results:
        r.get(timeout=10)
    with ServiceWatcher(zk, service) as watcher:
        assert len(watcher.membership) == 300
        before = watcher.read_count
        joiner = ServiceInstance.parse("http://10.9.9.9:80", id="joiner")
        zk.create(f"{path}/joiner", codec.encode(service, joiner))
        assert watcher.wait_for(lambda m: len(m) == 301, 10)
        join_reads = watcher.read_count - before
        assert join_reads <= 3, join_reads  # children list + the one new child

        before = watcher.read_count
        zk.set(
            f"{path}/n0007",
            codec.encode(service, ServiceInstance.parse("http://10.0.0.8:80", id="n0007", weight=9)),
        )
        assert watcher.wait_for(lambda m: m.by_id["n0007"].weight == 9, 10)
        assert watcher.read_count - before == 1  # just that child's data

        before = watcher.read_count
        zk.delete(f"{path}/n0001")
        assert watcher.wait_for(lambda m: "n0001" not in m.by_id, 10)
        assert watcher.read_count - before <= 2  # the children list (the data watch fires too)


def test_last_membership_is_kept_while_the_ensemble_is_down_then_converges(
    ensemble: ZooKeeperEnsemble, zk_hosts: str, service: str
) -> None:
    staying = KazooClient(hosts=zk_hosts, timeout=20.0)
    leaving = KazooClient(hosts=zk_hosts, timeout=4.0)
    for c in (staying, leaving):
        c.start(timeout=10)
    watcher = ServiceWatcher(zk_hosts, service, session_timeout=6.0).start(10)
    try:
        Registry(staying).register(service, "http://10.0.0.1:80")
        Registry(leaving).register(service, "http://10.0.0.2:80")
        assert watcher.wait_for(lambda m: len(m) == 2, 10)
        version = watcher.membership.version

        ensemble.stop_all()
        # The registering process of 10.0.0.2 goes away while ZooKeeper is down: its session will expire.
        leaving.stop()
        leaving.close()
        wait_until(lambda: watcher._client is not None and not watcher._client.connected, 10, "disconnect")
        assert urls(watcher.membership) == {"http://10.0.0.1:80", "http://10.0.0.2:80"}
        assert watcher.membership.version == version

        ensemble.start_all()
        assert watcher.wait_for(lambda m: urls(m) == {"http://10.0.0.1:80"}, 40), urls(watcher.membership)
        assert watcher.membership.version > version
    finally:
        watcher.close()
        staying.stop()
        staying.close()


def test_watcher_recovers_from_its_own_session_expiry(zk: KazooClient, zk_hosts: str, service: str) -> None:
    client = KazooClient(hosts=zk_hosts, timeout=4.0)
    client.start(timeout=10)
    try:
        with ServiceWatcher(client, service) as watcher, Registry(zk) as registry:
            registry.register(service, "http://10.0.0.1:80")
            assert watcher.wait_for(lambda m: len(m) == 1, 10)
            old_session = client.client_id[0]
            expire_session(client, zk_hosts)
            wait_until(lambda: client.connected and client.client_id[0] != old_session, 30, "a new session")
            assert len(watcher.membership) == 1  # kept across the expiry
            # Watches died with the old session; the watcher must have re-armed them.
            registry.register(service, "http://10.0.0.2:80")
            assert watcher.wait_for(lambda m: len(m) == 2, 10), urls(watcher.membership)
    finally:
        client.stop()
        client.close()


class _Longest(random.Random):
    """A random source whose every delay is the longest allowed: the re-sync delay made exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_resync_after_a_new_session_waits_its_random_delay(
    healthy_ensemble: ZooKeeperEnsemble, zk: KazooClient, service: str
) -> None:
    # A new session: nothing is armed on the server any more, so each watcher re-reads everything
    # (a reconnect of the same session re-arms its watches with SetWatches: tests/faults/test_rewatch.py).
    client = KazooClient(hosts=healthy_ensemble.hosts, timeout=15.0)
    client.start(timeout=30)
    reconnected: list[float] = []
    client.add_listener(lambda state: reconnected.append(time.monotonic()) if state == "CONNECTED" else None)
    try:
        with (
            ServiceWatcher(client, service, resync_delay=1.5, rng=_Longest()) as slow,
            ServiceWatcher(client, service, resync_delay=0) as prompt,
        ):
            reads = (slow.read_count, prompt.read_count)
            reconnected.clear()
            expire_session(client, healthy_ensemble.hosts)
            wait_until(lambda: reconnected and client.connected, 30, "a new session")
            wait_until(lambda: prompt.read_count > reads[1], 10, "the prompt watcher's re-sync")
            assert slow.read_count == reads[0]  # still waiting out its delay
            wait_until(lambda: slow.read_count > reads[0], 10, "the delayed watcher's re-sync")
            # From the new session's first connection: a later drop and reconnect (a loaded machine)
            # restarts the delay, so the time since the last one may be shorter than the delay.
            assert time.monotonic() - reconnected[0] >= 1.4
    finally:
        client.stop()
        client.close()


def test_a_watcher_restarted_after_a_failed_start_still_sees_data_changes(
    zk: KazooClient, service: str
) -> None:
    # A first start that gives up while its load is still being read; the load must not leak into the
    # next start, which would then think every child known (and so watch none of them).
    path = f"/services/{service}"
    codec = CuratorCodec()
    zk.create(path, makepath=True)
    pending = [
        zk.create_async(
            f"{path}/n{i:05d}",
            codec.encode(service, ServiceInstance.parse(f"http://10.1.{i // 250}.{i % 250 + 1}:80")),
        )
        for i in range(4000)
    ]
    for result in pending:
        result.get(timeout=30)
    watcher = ServiceWatcher(zk, service)
    try:
        with pytest.raises(RegistryError):
            watcher.start(timeout=0.01)
        watcher.start(timeout=60)
        assert len(watcher.membership) == 4000
        changed = ServiceInstance.parse("http://10.9.9.9:80", id="n00007", weight=7)
        zk.set(f"{path}/n00007", codec.encode(service, changed))
        assert watcher.wait_for(lambda m: m.by_id["n00007"].weight == 7, 10)
    finally:
        watcher.close()
