"""LoadBalancer against a real ZooKeeper ensemble: strategies, live changes, concurrency, outages."""

from __future__ import annotations

import collections
import functools
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from zklb import (
    ClosedError,
    LoadBalancer,
    Membership,
    NoServerAvailable,
    Registry,
    RegistryError,
    ServiceInstance,
    UnknownStrategy,
)
from zklb.testing import ZooKeeperEnsemble, wait_until

ROOT = Path(__file__).resolve().parents[2]


def has_id(key: str, membership: Membership) -> bool:
    return key in membership.by_id


def ports(lb: LoadBalancer, picks: int) -> list[int]:
    return [lb.get_server().port for _ in range(picks)]


def test_round_robin_visits_each_instance_once_per_cycle_in_stable_order(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="round_robin") as lb:
        for name, port in (("c", 3), ("a", 1), ("b", 2)):
            lb.add_server(f"http://127.0.0.1:{port}", id=name)
        seq = ports(lb, 9)
        start = seq.index(1)
        assert (seq + seq)[start : start + 9] == [1, 2, 3] * 3


def test_smooth_weighted_round_robin_sequence(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service) as lb:
        lb.add_server("http://127.0.0.1:1", id="a", weight=5)
        lb.add_server("http://127.0.0.1:2", id="b", weight=1)
        lb.add_server("http://127.0.0.1:3", id="c", weight=1)
        lb.set_strategy("weighted_round_robin")
        assert ports(lb, 14) == [1, 1, 2, 1, 3, 1, 1] * 2


def test_least_connections_follows_held_acquires(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="least_connections") as lb:
        lb.add_server("http://127.0.0.1:1", id="a")
        lb.add_server("http://127.0.0.1:2", id="b")
        lb.add_server("http://127.0.0.1:3", id="c", weight=2)
        held = [lb.acquire() for _ in range(4)]
        # Loads now equal (a 1/1, b 1/1, c 2/2): ties rotate, so idle picks still spread.
        assert collections.Counter(lease.server.port for lease in held) == {1: 1, 2: 1, 3: 2}
        assert set(ports(lb, 3)) == {1, 2, 3}
        with lb.acquire() as extra:
            busy = extra.port
            assert lb.stats()[extra.id].in_flight == (3 if busy == 3 else 2)
            assert busy not in ports(lb, 6)  # the instance with one more request is avoided
        assert lb.stats()[extra.id].requests == 1
        for lease in held:
            lease.release()
        assert all(s.in_flight == 0 for s in lb.stats().values())


def test_weight_changed_by_registration_update_takes_effect(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="weighted_round_robin") as lb:
        reg_a = lb.add_server("http://127.0.0.1:1", id="a", weight=1)
        lb.add_server("http://127.0.0.1:2", id="b", weight=1)
        assert collections.Counter(ports(lb, 10)) == {1: 5, 2: 5}
        reg_a.update(weight=4)
        wait_until(lambda: lb.membership.by_id["a"].weight == 4, 10, "the new weight")
        assert collections.Counter(ports(lb, 10)) == {1: 8, 2: 2}


def test_empty_pool_raises_no_server_available_then_fills(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, root="/svc-root") as lb:
        with pytest.raises(NoServerAvailable) as info:
            lb.get_server()
        assert service in str(info.value)
        assert "/svc-root" in str(info.value)
        with pytest.raises(NoServerAvailable):
            lb.acquire()
        with Registry(zk_hosts, root="/svc-root") as registry:
            registry.register(service, "http://127.0.0.1:9")
            wait_until(lambda: len(lb.servers()) == 1, 10, "the pool to fill")
            assert lb.get_server().port == 9


def test_unknown_strategy_names_the_valid_ones(zk_hosts: str, service: str) -> None:
    with pytest.raises(UnknownStrategy) as info:
        LoadBalancer(zk_hosts, service, strategy="fastest")
    message = str(info.value)
    assert "'fastest'" in message
    for name in ("round_robin", "weighted_round_robin", "least_connections"):
        assert name in message
    with LoadBalancer(zk_hosts, service) as lb, pytest.raises(UnknownStrategy):
        lb.set_strategy("nope")


def test_in_flight_counts_survive_membership_changes(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="least_connections") as lb:
        lb.add_server("http://127.0.0.1:1", id="a")
        lease = lb.acquire()
        assert lease.server.id == "a"
        lb.add_server("http://127.0.0.1:2", id="b")
        assert lb.stats()["a"].in_flight == 1
        assert ports(lb, 4) == [2, 2, 2, 2]  # a still counts as busy after the swap
        lb.set_strategy("least_connections")  # a strategy change keeps counts too
        assert lb.stats()["a"].in_flight == 1
        lease.release()
        lease.release()  # idempotent
        assert lb.stats()["a"].in_flight == 0


def test_lease_records_outcomes_and_exceptions_are_failures(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service) as lb:
        lb.add_server("http://127.0.0.1:1", id="a")
        with lb.acquire():
            pass
        with pytest.raises(RuntimeError), lb.acquire():
            raise RuntimeError("request failed")
        with lb.acquire() as server:
            lb.report(server, success=False)
        stats = lb.stats()["a"]
        assert (stats.requests, stats.failures, stats.consecutive_failures) == (3, 2, 2)
        assert stats.latency_ewma is not None


def test_seed_example_runs_nearly_line_for_line(zk_hosts: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed_example.py")],
        env={**os.environ, "ZKLB_HOSTS": zk_hosts},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(lines) == 6
    assert set(lines) == {"http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"}
    assert lines[:3] == lines[3:]  # round robin


def test_borrowed_client_default_service_and_close(zk: KazooClient) -> None:
    lb = LoadBalancer(zk)
    assert lb.service == "default"
    reg = lb.add_server("http://127.0.0.1:7")
    assert lb.get_server() == reg.instance
    lb.close()
    assert zk.connected  # borrowed: not stopped
    zk.sync(reg.path)
    assert zk.exists(reg.path) is None  # its own registration removed
    with pytest.raises(ClosedError):
        lb.get_server()


def test_concurrent_picks_during_membership_changes(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="least_connections") as lb:
        stable = [lb.add_server(f"http://127.0.0.1:{p}", id=f"s{p}") for p in (1, 2, 3)]
        errors: list[BaseException] = []
        removed: set[str] = set()
        stale: list[str] = []
        stop = threading.Event()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(20_000):
                    if stop.is_set():
                        return
                    if rng.random() < 0.5:
                        gone = set(removed)  # snapshot before the pick: removals already completed
                        server = lb.get_server()
                        if server.id in gone:
                            stale.append(server.id)
                    else:
                        with lb.acquire() as server:
                            if any(s.in_flight < 0 for s in lb.stats().values()):
                                stale.append("negative")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            for round_ in range(8):
                extra = lb.add_server(f"http://127.0.0.1:{100 + round_}", id=f"x{round_}")
                lb.set_strategy(["least_connections", "round_robin", "weighted_round_robin"][round_ % 3])
                extra.update(weight=3)
                lb.remove_server(extra)  # returns once the swap happened
                removed.add(extra.instance.id)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[:3]
        assert not stale, stale[:5]
        assert all(s.in_flight == 0 for s in lb.stats().values())
        assert {s.id for s in lb.servers()} == {r.instance.id for r in stable}


def test_get_server_keeps_answering_while_the_whole_ensemble_is_down(
    ensemble: ZooKeeperEnsemble, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry:
        for port in (1, 2):
            registry.register(service, ServiceInstance.parse(f"http://127.0.0.1:{port}", id=f"n{port}"))
        lb = LoadBalancer(zk_hosts, service).start()
        try:
            wait_until(lambda: len(lb.servers()) == 2, 10, "both servers")
            ensemble.stop_all()
            client = lb._handle.peek() if lb._handle else None
            wait_until(lambda: client is not None and not client.connected, 20, "the client to notice")
            assert sorted(ports(lb, 4)) == [1, 1, 2, 2]
            with lb.acquire() as server:
                assert server.port in (1, 2)
            ensemble.start_all()
            wait_until(lambda: client is not None and client.connected, 60, "reconnect")
            registry.register(service, "http://127.0.0.1:3")
            wait_until(lambda: len(lb.servers()) == 3, 30, "convergence after the outage")
        finally:
            lb.close()


def test_cancelled_requests_free_the_slot_without_recording_an_outcome(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="least_connections") as lb:
        lb.add_server("http://127.0.0.1:1", id="a")
        lease = lb.acquire()
        lease.cancel()
        with pytest.raises(KeyboardInterrupt), lb.acquire():
            raise KeyboardInterrupt
        stats = lb.stats()["a"]
        assert (stats.in_flight, stats.requests, stats.failures) == (0, 0, 0)


def test_rolling_restart_of_the_ensemble_keeps_the_pool_and_its_changes(
    ensemble: ZooKeeperEnsemble, zk_hosts: str, service: str
) -> None:
    with LoadBalancer(zk_hosts, service) as lb, Registry(zk_hosts) as registry:
        lb.add_server("http://127.0.0.1:1", id="first")
        for member in ensemble.members:
            ensemble.stop_member(member.index)
            assert lb.get_server().id == "first" or len(lb.servers()) > 1  # still serving meanwhile
            url = f"http://127.0.0.1:{10 + member.index}"
            registered: list[str] = []

            def register(url: str = url, registered: list[str] = registered) -> bool:
                try:
                    registered.append(registry.register(service, url).instance.id)
                except RegistryError:
                    return False  # the registry's client is failing over to a live member
                return True

            wait_until(register, 30, f"a registration while member {member.index} is down")
            assert lb.wait_for(functools.partial(has_id, registered[0]), 30), "the balancer did not see it"
            ensemble.start_member(member.index, wait=True, timeout=60)
            ensemble.wait_serving(timeout=60)
        assert len(lb.servers()) == 1 + len(ensemble.members)


def test_drain_stops_new_picks_keeps_in_flight_and_close_with_drain_deregisters(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    with LoadBalancer(zk_hosts, service, strategy="least_connections") as lb:
        keep = lb.add_server("http://127.0.0.1:1", id="keep")
        leaving = lb.add_server("http://127.0.0.1:2", id="leaving")
        in_flight = [lb.acquire() for _ in range(2)]
        assert {lease.server.id for lease in in_flight} == {"keep", "leaving"}
        assert leaving.drain()
        zk.sync(leaving.path)
        data, _ = zk.get(leaving.path)
        assert json.loads(data)["payload"]["metadata"]["instance_status"] == "OUT_OF_SERVICE"  # Spring's word
        wait_until(lambda: lb.pool_stats().draining == 1, 10, "the drain to reach the pool")
        assert {lb.get_server().id for _ in range(20)} == {"keep"}
        assert {lb.acquire().server.id for _ in range(5)} == {"keep"}
        assert lb.stats()["leaving"].in_flight == 1  # the request already sent is left to finish
        stats = lb.pool_stats()
        assert (stats.size, stats.healthy, stats.draining, stats.connection) == (2, 1, 1, "connected")
        keep.drain()  # everything draining: better a draining instance than no server at all
        wait_until(lambda: lb.pool_stats().draining == 2, 10, "both draining")
        assert lb.get_server().id in {"keep", "leaving"}
        # close(drain=s): drain (already), wait, then delete; the pool shrinks only after the wait.
        closer = threading.Thread(target=leaving.close, kwargs={"drain": 0.5})
        closer.start()
        assert "leaving" in lb.membership.by_id
        closer.join(10)
        wait_until(lambda: "leaving" not in lb.membership.by_id, 10, "the drained instance to leave")
        for lease in in_flight:
            lease.release()


def test_removing_the_last_server_empties_the_pool_at_once(zk_hosts: str, service: str) -> None:
    # empty_grace rides out every instance vanishing together (a registrar's expiry), not a removal
    # this very balancer asked for.
    with LoadBalancer(zk_hosts, service, empty_grace=30.0) as lb:
        only = lb.add_server("http://127.0.0.1:1")
        assert lb.remove_server(only, timeout=10.0)
        assert len(lb.membership) == 0
        with pytest.raises(NoServerAvailable):
            lb.get_server()
