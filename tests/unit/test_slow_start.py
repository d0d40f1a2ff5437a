"""Slow start: Envoy's ramp (monotone, ending at full weight) and the thinning that applies it to picks."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.conftest import FakeClock

from zklb import ConfigurationError, HealthPolicy, LoadBalancer, ServiceInstance, SlowStart
from zklb.slow_start import WINDOW_METADATA, Ramp


@pytest.mark.parametrize(
    "bad", [{"window": 0.0}, {"min_weight_percent": 0.0}, {"min_weight_percent": 101.0}, {"aggression": 0}]
)
def test_bad_settings_are_configuration_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        SlowStart(**bad)


@settings(max_examples=200, deadline=None)
@given(
    window=st.floats(min_value=0.5, max_value=600),
    floor=st.floats(min_value=0.1, max_value=100),
    aggression=st.floats(min_value=0.1, max_value=10),
    times=st.lists(st.floats(min_value=0, max_value=1200), min_size=2, max_size=20),
)
def test_the_ramp_is_monotone_bounded_and_ends_at_full_weight(
    window: float, floor: float, aggression: float, times: list[float]
) -> None:
    ramp = SlowStart(window=window, min_weight_percent=floor, aggression=aggression)
    factors = [ramp.factor(t) for t in sorted(times)]
    assert factors == sorted(factors)
    assert all(floor / 100 - 1e-12 <= f <= 1.0 for f in factors)
    assert ramp.factor(window) == ramp.factor(window + 1) == 1.0


def test_envoys_formula() -> None:
    linear = SlowStart(window=30.0, min_weight_percent=10.0, aggression=1.0)
    assert linear.factor(0.0) == 0.1  # max(t, 1) / 30 is below the floor
    assert linear.factor(15.0) == pytest.approx(0.5)
    eager = SlowStart(window=30.0, aggression=2.0)
    assert eager.factor(7.5) == pytest.approx(0.5)  # (7.5 / 30) ** (1 / 2)


def test_an_instances_own_window_comes_from_its_metadata() -> None:
    slow = SlowStart(window=30.0)
    own = ServiceInstance(id="a", host="127.0.0.1", port=1, metadata={WINDOW_METADATA: "600"})
    broken = ServiceInstance(id="b", host="127.0.0.1", port=2, metadata={WINDOW_METADATA: "soon"})
    assert slow.window_of(own) == 600.0
    assert slow.window_of(broken) == 30.0


def test_ramp_start_is_the_later_of_first_seen_and_registration() -> None:
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    ramp = Ramp(SlowStart(window=30.0), wall=lambda: wall)
    fresh = ServiceInstance(id="a", host="127.0.0.1", port=1, registered_at=wall - timedelta(seconds=10))
    old = ServiceInstance(id="b", host="127.0.0.1", port=2, registered_at=wall - timedelta(hours=1))
    unknown = ServiceInstance(id="c", host="127.0.0.1", port=3)
    # In the balancer's first membership, registration alone decides: warm servers do not ramp.
    ramp.follow((fresh, old, unknown), now=100.0, first=True)
    assert dict(ramp.ramping) == {"a": (90.0, 30.0)}
    # Joining later: from when first seen, unless registered later than that (a clock ahead).
    later = Ramp(SlowStart(window=30.0), wall=lambda: wall)
    later.follow((), now=100.0, first=True)
    later.follow((fresh, old, unknown), now=100.0, first=False)
    assert dict(later.ramping) == {"a": (100.0, 30.0), "b": (100.0, 30.0), "c": (100.0, 30.0)}


def shares(lb: LoadBalancer, picks: int, acquire: bool = False) -> Counter[int]:
    if not acquire:
        return Counter(lb.get_server().port for _ in range(picks))
    seen: Counter[int] = Counter()
    for _ in range(picks):
        with lb.acquire() as server:
            seen[server.port] += 1
    return seen


@pytest.mark.parametrize("strategy", ["weighted_random", "round_robin", "least_request"])
def test_an_instance_back_from_ejection_ramps_to_its_full_share(strategy: str) -> None:
    clock = FakeClock()
    servers = [ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k) for k in range(4)]
    lb = LoadBalancer.static(
        servers,
        strategy=strategy,
        health=HealthPolicy(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=50.0),
        clock=clock,
        slow_start=SlowStart(window=30.0, min_weight_percent=10.0),
    )
    assert lb._pick == lb._picker.pick  # type: ignore[union-attr]  # nothing ramps: the bare pick
    lb.report(servers[0], success=False)
    clock.advance(10.0)  # it comes back, at 10 % of its weight
    picks = 20_000
    for elapsed, factor in ((0.0, 0.1), (15.0, 0.5)):
        seen = shares(lb, picks, acquire=strategy == "least_request")
        expected = picks * factor / (3 + factor)
        assert abs(seen[8000] - expected) < 0.15 * expected + 100, (elapsed, seen)
        clock.advance(15.0)
    clock.advance(0.5)  # past the window: full weight, and the bare pick function again
    seen = shares(lb, picks)
    assert abs(seen[8000] - picks / 4) < 0.1 * picks / 4
    assert lb._pick == lb._picker.pick  # type: ignore[union-attr]


def test_thinning_gives_each_ramping_instance_its_weight_times_its_factor() -> None:
    clock = FakeClock()
    rng = random.Random(4)
    ramp = Ramp(SlowStart(window=100.0, min_weight_percent=5.0), rng=rng)
    members = tuple(ServiceInstance(id=f"i{k}", host="127.0.0.1", port=1 + k) for k in range(3))
    ramp.follow((), clock(), first=True)
    ramp.follow(members, clock(), first=False)  # all three ramp, from different starts:
    ramp.restart([members[1]], clock() + 20.0, 3)
    ramp.restart([members[2]], clock() + 60.0, 3)
    ramp.tick(clock() + 80.0 - 1.0, 3)  # the step around 80 s: factors 0.8, 0.6, 0.2
    admitted: Counter[str] = Counter()
    for _ in range(30_000):
        pick = members[rng.randrange(3)]
        if ramp.admits(pick.id):
            admitted[pick.id] += 1
    total = sum(admitted.values())
    for key, factor in (("i0", 0.8), ("i1", 0.6), ("i2", 0.2)):
        assert admitted[key] / total == pytest.approx(factor / 1.6, abs=0.015)
    assert total > 30_000 * 1.6 / 3 * 0.95  # drawn again only as often as the bound requires


def test_https_picks_move_the_ramp_on_too() -> None:
    # A service called only over https picks through the TLS picker of a mixed pool: those picks must
    # step the ramps as the others do, else an instance back from ejection stays at its first factor.
    clock = FakeClock()
    servers = [
        ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, ssl_port=9000 + k) for k in range(4)
    ]
    plain = ServiceInstance(id="plain", host="127.0.0.1", port=8100)
    lb = LoadBalancer.static(
        [*servers, plain],
        strategy="round_robin",
        health=HealthPolicy(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=50.0),
        clock=clock,
        slow_start=SlowStart(window=30.0, min_weight_percent=10.0),
    )
    lb.report(servers[0], success=False)
    clock.advance(10.0)  # it comes back, at 10 % of its weight

    def https_shares(picks: int) -> Counter[int]:
        seen: Counter[int] = Counter()
        for _ in range(picks):
            with lb.acquire(tls=True) as server:
                seen[server.port] += 1
        return seen

    picks = 20_000
    for elapsed, factor in ((0.0, 0.1), (15.0, 0.5)):
        seen = https_shares(picks)
        assert seen[8100] == 0  # never the plain instance
        expected = picks * factor / (3 + factor)
        assert abs(seen[8000] - expected) < 0.15 * expected + 100, (elapsed, seen)
        clock.advance(15.0)
    clock.advance(0.5)  # past the window: full weight
    seen = https_shares(picks)
    assert abs(seen[8000] - picks / 4) < 0.1 * picks / 4, seen
