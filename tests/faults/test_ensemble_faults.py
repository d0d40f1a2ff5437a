"""Faults of ZooKeeper itself, under load: the leader killed, the whole ensemble stopped, a session
expired. Balancers keep serving from what they know; registrations come back; nothing is duplicated."""

from __future__ import annotations

import time

import pytest
from kazoo.client import KazooClient
from tests.faults.conftest import PickLoad, children, decoded_urls, leader_first_client, owners

from zklb import LoadBalancer, Registry
from zklb.testing import ZooKeeperEnsemble, expire_session, wait_until


def ids(lb: LoadBalancer) -> set[str]:
    return {server.id for server in lb.membership.instances}


def test_leader_killed_while_four_threads_pick(
    healthy_ensemble: ZooKeeperEnsemble, zk: KazooClient, service: str
) -> None:
    ensemble = healthy_ensemble
    (leader,) = [m.index for m in ensemble.members if m.mode() == "leader"]
    # Both the registrar and the balancer talk to the leader, so its death is their connection loss.
    registrar = leader_first_client(ensemble, leader)
    watcher = leader_first_client(ensemble, leader)
    try:
        assert registrar.connected and watcher.connected
        registry = Registry(registrar)
        registered = {
            registry.register(service, f"http://127.0.0.1:{port}").instance.id for port in (1, 2, 3)
        }
        session = registrar.client_id[0]
        lb = LoadBalancer(watcher, service).start(timeout=30)
        try:
            wait_until(lambda: ids(lb) == registered, 10, "the balancer to see the three instances")
            with PickLoad(lb, threads=4) as load:
                wait_until(lambda: load.count("before") >= 200, 10, "picks before the kill")
                load.phase = "election"
                ensemble.kill_member(leader)
                ensemble.wait_serving(timeout=60)
                load.phase = "after"
                wait_until(lambda: registrar.connected and watcher.connected, 30, "both clients back")
                wait_until(lambda: load.count("after") >= 200, 10, "picks after the election")
            assert load.failures == [], load.failures[:5]
            assert load.count("election") > 0, "no pick ran while the ensemble elected a new leader"
            assert all(n > 0 for n in load.per_thread), load.per_thread
            assert set().union(*load.picked.values()) == registered

            # Every registration is still there, once, owned by the registrar's session that survived.
            path = f"/services/{service}"
            assert registrar.client_id[0] == session
            assert owners(zk, path) == dict.fromkeys(registered, session)
            assert ids(lb) == registered
            # The balancer still follows changes: its watches survived the election (or were re-armed).
            late = registry.register(service, "http://127.0.0.1:4").instance.id
            assert lb.wait_for(lambda m: late in m.by_id, 10), ids(lb)
            assert children(zk, path) == sorted(registered | {late})
        finally:
            lb.close()
            registry.close()
    finally:
        for client in (registrar, watcher):
            client.stop()
            client.close()


def when_back_and_converged(lb: LoadBalancer, expected: set[str], timeout: float) -> tuple[float, float]:
    """When ``lb`` was first seen connected, and first seen holding exactly ``expected`` (monotonic)."""
    deadline = time.monotonic() + timeout
    connected: float | None = None
    converged: float | None = None
    while connected is None or converged is None:
        now = time.monotonic()
        assert now < deadline, f"after {timeout:g} s: connected at {connected}, pool {ids(lb)}"
        if connected is None and lb.pool_stats().connection == "connected":
            connected = now
        if converged is None and ids(lb) == expected:
            converged = now
        time.sleep(0.005)
    return connected, converged


OUTAGE = 20.0  # seconds the whole ensemble stays down: longer than every default timeout (10 s)


def test_whole_ensemble_stopped_under_load_then_changes_converge(
    healthy_ensemble: ZooKeeperEnsemble,
    zk: KazooClient,
    zk_hosts: str,
    service: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ensemble = healthy_ensemble
    with Registry(zk_hosts) as registry:
        leaving, *staying = [registry.register(service, f"http://127.0.0.1:{p}") for p in (1, 2, 3)]
        before = {r.instance.id for r in (leaving, *staying)}
        lb = LoadBalancer(zk_hosts, service).start(timeout=30)
        try:
            wait_until(lambda: ids(lb) == before, 10, "the balancer to see the three instances")
            assert lb.pool_stats().connection == "connected"
            with PickLoad(lb, threads=4) as load:
                wait_until(lambda: load.count("before") >= 100, 10, "picks before the outage")
                ensemble.stop_all()
                wait_until(lambda: lb.pool_stats().connection != "connected", 15, "the balancer to notice")
                load.phase = "outage"
                down_at = time.monotonic()
                wait_until(lambda: time.monotonic() - down_at >= OUTAGE, OUTAGE + 5, f"{OUTAGE:g} s down")
                # Still a full pool, from the last known membership.
                assert lb.has_server()
                stats = lb.pool_stats()
                assert (stats.size, stats.healthy, stats.ejected) == (3, 3, 0)
                assert stats.connection in ("suspended", "lost"), stats
                outage_picks = load.count("outage")
                load.phase = "recovery"
                ensemble.start_all()
                back_at = time.monotonic()

                # One instance added, one removed, as soon as ZooKeeper takes writes again.
                added = registry.register(service, "http://127.0.0.1:4")
                leaving.close()
                changed_at = time.monotonic()
                after = (before - {leaving.instance.id}) | {added.instance.id}
                reconnected_at, converged_at = when_back_and_converged(lb, after, timeout=30)
                wait_until(lambda: load.count("recovery") >= 100, 10, "picks after the recovery")
            with capsys.disabled():
                print(
                    f"\n[ensemble down {OUTAGE:g} s] {outage_picks} picks while down, {len(load.failures)} "
                    f"failed; after the restart: change done {changed_at - back_at:.2f} s, balancer "
                    f"connected {reconnected_at - back_at:.2f} s, converged {converged_at - back_at:.2f} s"
                )
            assert load.failures == [], load.failures[:5]
            assert outage_picks > 1000, f"only {outage_picks} picks while ZooKeeper was down"
            assert load.picked["outage"] == before  # last known membership, all of it
            # Converged within 2 s of ZooKeeper holding the change and the balancer being connected...
            took = converged_at - max(changed_at, reconnected_at)
            assert took <= 2.0, f"converged {took:.2f} s after the change reached a connected balancer"
            # ...which reconnects promptly (zklb's own client retries at least every 2 s, plus jitter).
            reconnect = reconnected_at - back_at
            assert reconnect <= 5.0, f"connected {reconnect:.2f} s after the restart"
            assert lb.wait_for(lambda m: set(m.by_id) != after, 1.0) is False  # and stays converged
            assert decoded_urls(zk, service) == [f"http://127.0.0.1:{p}" for p in (2, 3, 4)]
        finally:
            lb.close()


def test_registrars_session_expired_znodes_come_back_without_duplicates(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    registrar = KazooClient(hosts=zk_hosts, timeout=4.0)
    registrar.start(timeout=30)
    try:
        registry = Registry(registrar)
        urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        registered = {registry.register(service, url).instance.id for url in urls}
        path = f"/services/{service}"
        old = registrar.client_id[0]
        with LoadBalancer(zk_hosts, service) as lb:
            wait_until(lambda: ids(lb) == registered, 10, "the balancer to see both instances")
            expire_session(registrar, zk_hosts)
            wait_until(
                lambda: registrar.connected and registrar.client_id[0] != old,
                30,
                "the registrar's new session",
            )
            new = registrar.client_id[0]
            wait_until(
                lambda: owners(zk, path) == dict.fromkeys(registered, new),
                15,
                "both znodes back, owned by the new session",
            )
            assert decoded_urls(zk, service) == urls  # one znode per instance: no duplicate
            assert lb.wait_for(lambda m: set(m.by_id) == registered, 10), ids(lb)
            # No late duplicate either: the pool never grows past the two.
            assert lb.wait_for(lambda m: len(m) > 2, 1.5) is False, ids(lb)
            assert children(zk, path) == sorted(registered)
        registry.close()
        assert children(zk, path) == []
    finally:
        registrar.stop()
        registrar.close()
