"""peak_ewma and an instance that joins a pool already measured as fast: it must get traffic at once."""

from __future__ import annotations

import collections

from kazoo.client import KazooClient

from zklb import LoadBalancer, PeakEwma, Registry
from zklb.testing import wait_until


class _Clock:
    """Time that moves only when the test says (peak_ewma's decay is over seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_instance_joining_a_fast_pool_gets_traffic_at_once(zk: KazooClient, service: str) -> None:
    """Three instances answer in 1 ms; a fourth joins. Started at ``default_rtt`` (0.1 s) with a cost that
    decays no faster than the others', it would lose every comparison for decay * ln(100) = 46 s and get
    no sample to correct it (found by an adversarial run: 0 of 4,000 picks). It starts as good as the best.
    """
    clock = _Clock()
    registry = Registry(zk)
    lb = LoadBalancer(zk, service, strategy=PeakEwma(clock=clock))
    try:
        for port in (8801, 8802, 8803):
            registry.register(service, f"http://127.0.0.1:{port}")
        lb.start()
        wait_until(lambda: len(lb.servers()) == 3, 10, "three instances")
        for _ in range(200):  # warm: 1 ms answers over 20 s
            clock.now += 0.1
            server = lb.get_server()
            lb.report(server, success=True, latency=0.001)
        registry.register(service, "http://127.0.0.1:8804")
        wait_until(lambda: len(lb.servers()) == 4, 10, "the fourth")
        picks: collections.Counter[int] = collections.Counter()
        for _ in range(4000):  # 20 s of traffic after the join, still 1 ms answers from whoever is picked
            clock.now += 0.005
            server = lb.get_server()
            picks[server.port] += 1
            lb.report(server, success=True, latency=0.001)
        assert picks[8804] > 4000 * 0.1, dict(picks)  # its share, roughly, once its 1 ms answers count
    finally:
        lb.close()
        registry.close()
