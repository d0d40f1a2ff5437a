"""Slow start and zone preference on a balancer fed by a real ZooKeeper."""

from __future__ import annotations

from collections import Counter

import pytest
from tests.unit.conftest import FakeClock

from zklb import LoadBalancer, SlowStart


def share(lb: LoadBalancer, port: int, picks: int = 20_000) -> float:
    return Counter(lb.get_server().port for _ in range(picks))[port] / picks


def test_an_instance_that_registers_ramps_up_while_those_already_there_do_not(
    zk_hosts: str, service: str
) -> None:
    clock = FakeClock()
    slow = SlowStart(window=30.0, min_weight_percent=10.0)
    with LoadBalancer(zk_hosts, service, strategy="weighted_random", clock=clock, slow_start=slow) as lb:
        lb.add_server("http://127.0.0.1:8001", weight=2)
        lb.add_server("http://127.0.0.1:8002", weight=2)
        clock.advance(31.0)  # both registered after the balancer started: ramped, and now warm
        assert share(lb, 8001) == pytest.approx(0.5, abs=0.03)
        lb.add_server("http://127.0.0.1:8003", weight=4)
        # Weight 4 among 2 + 2, at 10 %: 0.4 / 4.4; half way: 2 / 6; after the window: 4 / 8.
        assert share(lb, 8003) == pytest.approx(0.4 / 4.4, abs=0.02)
        clock.advance(15.0)
        assert share(lb, 8003) == pytest.approx(2 / 6, abs=0.03)
        clock.advance(15.0)
        assert share(lb, 8003) == pytest.approx(0.5, abs=0.03)


def test_zone_preference_falls_back_when_the_zone_drains_and_returns(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, strategy="round_robin", prefer={"zone": "a"}) as lb:
        near = lb.add_server("http://127.0.0.1:8001", metadata={"zone": "a"})
        lb.add_server("http://127.0.0.1:8002", metadata={"zone": "b"})
        lb.add_server("http://127.0.0.1:8003", metadata={"zone": "b"})
        assert {lb.get_server().port for _ in range(30)} == {8001}
        near.drain()
        assert lb.wait_for(lambda m: m.by_id[near.instance.id].draining, 10.0)
        assert {lb.get_server().port for _ in range(30)} == {8002, 8003}
        near.update(metadata={"zone": "a", "instance_status": "UP"})
        assert lb.wait_for(lambda m: not m.by_id[near.instance.id].draining, 10.0)
        assert {lb.get_server().port for _ in range(30)} == {8001}
