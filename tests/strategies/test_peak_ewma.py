"""Peak EWMA: slow instances get little traffic, get it back as their cost decays and recovers."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from tests.strategies.conftest import membership
from tests.unit.conftest import FakeClock

from zklb import ConfigurationError, LoadBalancer, PeakEwma
from zklb.strategies.peak_ewma import PeakEwmaPicker

FAST, SLOW = 0.01, 1.0


def serve(lb: LoadBalancer, clock: FakeClock, latency: dict[int, float], requests: int) -> Counter[int]:
    """Send ``requests`` one after another, each taking its server's latency on the fake clock."""
    seen: Counter[int] = Counter()
    for _ in range(requests):
        lease = lb.acquire()
        port = lease.server.port
        seen[port] += 1
        clock.advance(latency[port])
        lease.release()
        # The lease measured real (tiny) time; the sample that counts is the server's latency.
        lb.report(lease.server, success=True, latency=latency[port])
    return seen


@pytest.mark.parametrize("settings_", [{"decay": 0.0}, {"decay": math.inf}, {"default_rtt": -1.0}])
def test_bad_settings(settings_: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PeakEwma(**settings_)  # type: ignore[arg-type]


def test_a_slow_instance_gets_little_traffic_and_gets_it_back_when_it_recovers() -> None:
    clock = FakeClock()
    strategy = PeakEwma(decay=10.0, clock=clock, rng=random.Random(1))
    ports = (8001, 8002, 8003)
    lb = LoadBalancer.static([f"http://127.0.0.1:{p}" for p in ports], strategy=strategy, clock=clock)
    latency = {8001: SLOW, 8002: FAST, 8003: FAST}
    warm = serve(lb, clock, latency, 300)
    assert warm[8001] <= 5  # tried early on (default cost), then avoided
    # The others keep being sampled at FAST while the slow one's cost decays without samples: it is
    # tried again once its cost falls below theirs (about decay * ln(SLOW / FAST) = 46 s), not never.
    tried_again = 0
    for _ in range(60):
        tried_again += serve(lb, clock, {8001: FAST, 8002: FAST, 8003: FAST}, 50)[8001]
        if tried_again:
            break
        clock.advance(1.0)
    assert tried_again
    # Now fast again: its samples bring its cost down and it gets its share back.
    latency[8001] = FAST
    back = serve(lb, clock, latency, 3000)
    assert back[8001] > 3000 / 3 * 0.6


def test_a_peak_counts_in_full_at_once_and_fades_over_decay() -> None:
    clock = FakeClock()
    picker = PeakEwma(decay=10.0, default_rtt=0.1, clock=clock).build(membership({"a": 1, "b": 1}))
    assert isinstance(picker, PeakEwmaPicker)
    a = picker._instances[0]
    picker.observe(a, 2.0)
    assert picker.cost(0, clock()) == pytest.approx(2.0)
    clock.advance(10.0)
    assert picker.cost(0, clock()) == pytest.approx(2.0 / math.e)
    picker.observe(a, 0.1)  # below the cost: an average weighted by the 10 s since the last sample
    assert picker.cost(0, clock()) == pytest.approx(2.0 / math.e + 0.1 * (1 - 1 / math.e))
    picker.released(a, True, 0.0)  # no latency measured (a cancelled request): no sample
    assert picker.cost(0, clock()) == pytest.approx(2.0 / math.e + 0.1 * (1 - 1 / math.e))


def test_load_counts_and_weight_divides_the_cost() -> None:
    clock = FakeClock()
    picker = PeakEwma(clock=clock, rng=random.Random(2)).build(membership({"a": 1, "b": 1}))
    picker.seed({"a": 1})  # equal default costs: the one with fewer in flight wins
    assert {picker.pick().id for _ in range(50)} == {"b"}
    heavy = PeakEwma(clock=clock, rng=random.Random(2)).build(membership({"a": 5, "b": 1}))
    heavy.seed({"a": 3})  # a: 0.1 * 4 / 5 < b: 0.1 * 1 / 1
    assert {heavy.pick().id for _ in range(50)} == {"a"}


def test_costs_survive_a_membership_change_and_a_rebase() -> None:
    clock = FakeClock()
    strategy = PeakEwma(decay=1.0, clock=clock)
    first = strategy.build(membership({"a": 1, "b": 1}))
    assert isinstance(first, PeakEwmaPicker)
    first.observe(first._instances[0], 3.0)
    second = strategy.build(membership({"a": 1, "b": 1, "c": 1}, version=2))
    assert isinstance(second, PeakEwmaPicker)
    assert second.cost(0, clock()) == pytest.approx(3.0)
    assert second.cost(2, clock()) == pytest.approx(0.1)
    # Far past what exp() can scale (1e4 decays): the epoch moves and nothing overflows.
    clock.advance(10_000.0)
    second.observe(second._instances[1], 0.5)
    assert second.cost(1, clock()) == pytest.approx(0.5)
    assert second.cost(0, clock()) == 0.0
    assert second.pick_excluding({"b"}) is not None
    assert second.pick_excluding({"a", "b", "c"}) is None
