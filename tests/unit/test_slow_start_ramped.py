"""Slow start by the picker itself: weighted pickers rebuilt over ramped weights once per step.

A pick in slow start is then the ramped picker's own pick (no wrapper, no clock read per pick); the
rebuild runs in one pick per step, off the pool's lock.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import pytest
from tests.unit.conftest import FakeClock

from zklb import HealthPolicy, LoadBalancer, ServiceInstance, SlowStart
from zklb.membership import Membership
from zklb.strategies import LeastRequest, Picker, Strategy, WeightedRandom, WeightedRoundRobin
from zklb.strategies.weighted_random import WeightedRandomPicker

WEIGHTS = (2, 1, 1, 1)
EJECT_ONE = HealthPolicy(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=50.0)


class CountingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def pool(strategy: Strategy, clock: FakeClock) -> tuple[LoadBalancer, list[ServiceInstance]]:
    servers = [
        ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, weight=w) for k, w in enumerate(WEIGHTS)
    ]
    lb = LoadBalancer.static(
        servers, strategy=strategy, health=EJECT_ONE, clock=clock, slow_start=SlowStart(window=30.0)
    )
    return lb, servers


def back_from_ejection(lb: LoadBalancer, server: ServiceInstance, clock: FakeClock) -> None:
    """Eject ``server`` and let it come back: it ramps from 10 % of its weight, from now."""
    lb.report(server, success=False)
    clock.advance(10.0)
    lb.get_server()  # ends the ejection: the ramp starts


@pytest.mark.parametrize(
    "strategy",
    [WeightedRoundRobin(), WeightedRoundRobin(schedule_limit=1), WeightedRandom(random.Random(3))],
    ids=["wrr-cycle", "wrr-streamed", "weighted-random"],
)
def test_a_returning_instance_gets_its_weight_times_its_factor_from_a_plain_pick(strategy: Strategy) -> None:
    clock = CountingClock()
    lb, servers = pool(strategy, clock)
    back_from_ejection(lb, servers[0], clock)
    picks = 20_000
    for factor in (0.1, 0.51):  # the factor at the middle of the step: 0.1 at first, (15.3 / 30) later
        lb.get_server()  # the step's ramped picker is built by this pick (or the one before)
        reads = clock.reads
        seen = Counter(lb.get_server().id for _ in range(picks))
        # The plain (ramped) picker's pick: the clock is read once per stretch of up to 1,024 picks.
        assert clock.reads - reads <= 3 * (picks // 1024 + 1)
        expected = picks * 2 * factor / (2 * factor + 3)
        assert abs(seen["i0"] - expected) < 0.1 * expected + 50, (factor, seen)
        assert abs(seen["i1"] - seen["i2"]) < 0.05 * picks
        clock.advance(15.0)
    clock.advance(0.5)  # past the window: full weight, and the bare pick function again
    seen = Counter(lb.get_server().id for _ in range(picks))
    assert abs(seen["i0"] - picks * 2 / 5) < 0.05 * picks
    assert lb._pick == lb._picker.pick  # type: ignore[union-attr]


def test_acquire_takes_the_fast_path_with_the_ramped_picker() -> None:
    clock = FakeClock()
    lb, servers = pool(WeightedRoundRobin(), clock)
    back_from_ejection(lb, servers[0], clock)
    seen: Counter[str] = Counter()
    for _ in range(5_000):
        with lb.acquire() as server:
            seen[server.id] += 1
    assert lb._fast
    expected = 5_000 * 0.2 / 3.2
    assert abs(seen["i0"] - expected) < 0.1 * expected + 30, seen


class CountingWeightedRandom(WeightedRandom):
    """Weighted random whose pickers record each ramped build: when, and whether the pool's lock was held."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(random.Random(5))
        self.clock = clock
        self.builds: list[tuple[float, bool]] = []
        self.lb: LoadBalancer | None = None

    def build(self, membership: Membership) -> Picker:
        strategy = self

        class Recording(WeightedRandomPicker):
            __slots__ = ()

            def ramped_pick(self, factors: Mapping[str, float]) -> Callable[[], ServiceInstance]:
                assert strategy.lb is not None
                strategy.builds.append((strategy.clock(), strategy.lb._lock.locked()))
                return super().ramped_pick(factors)

        return Recording(membership, self.rng)


def test_the_ramped_picker_is_built_once_per_step_and_never_under_the_pools_lock() -> None:
    clock = FakeClock()
    strategy = CountingWeightedRandom(clock)
    lb, servers = pool(strategy, clock)
    strategy.lb = lb
    back_from_ejection(lb, servers[0], clock)
    step = 30.0 / 50
    steps = 0
    while lb._pick != lb._picker.pick:  # type: ignore[union-attr]
        assert steps < 60
        for _ in range(3_000):
            lb.get_server()
        clock.advance(step)
        steps += 1
    times = [at for at, _ in strategy.builds]
    assert len(times) == len(set(times))  # at most one build per step (the clock moves once a step)
    assert 45 <= len(times) <= steps + 1
    assert not any(locked for _, locked in strategy.builds)


@pytest.mark.parametrize(
    "strategy", [WeightedRoundRobin(), LeastRequest(rng=random.Random(2))], ids=["ramped", "thinned"]
)
def test_picks_from_many_threads_while_the_ramp_steps(strategy: Strategy) -> None:
    clock = FakeClock()
    lb, servers = pool(strategy, clock)
    back_from_ejection(lb, servers[0], clock)
    members = set(servers)
    errors: list[BaseException] = []
    stop = threading.Event()
    counts = [0] * 4

    def picking(slot: int) -> None:
        try:
            while not stop.is_set() and counts[slot] < 2_000_000:
                server = lb.get_server()
                assert server in members
                with lb.acquire() as other:
                    assert other in members
                counts[slot] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    threads = [threading.Thread(target=picking, args=(k,)) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(70):  # through the whole window, a step at a time, while the threads pick
            seen = sum(counts)
            deadline = 200_000
            while sum(counts) < seen + 500 and deadline and not errors:
                deadline -= 1
                threading.Event().wait(0.0001)
            clock.advance(30.0 / 50)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10.0)
        sys.setswitchinterval(before)
    assert not errors
    lb.get_server()
    for _ in range(2_000):  # a stretch: the next look sees the ramp over
        lb.get_server()
    assert lb._pick == lb._picker.pick  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", ["least_request", "round_robin", "power_of_two_choices"])
def test_other_strategies_pick_bare_while_every_ramp_keeps_the_same_pace(strategy: str) -> None:
    # All registered at once: every factor equal, nothing to thin, so the pick is the picker's own
    # (behind the look at the clock every stretch); staggered, the picks are thinned.
    now = datetime.now(UTC)
    servers = [
        ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, registered_at=now) for k in range(4)
    ]
    lb = LoadBalancer.static(servers, strategy=strategy, slow_start=SlowStart(window=3600.0))
    assert lb._ramp is not None and lb._ramp.ramping
    for _ in range(100):
        lb.get_server()
    assert lb._ramp.ramped == lb._picker.pick  # type: ignore[union-attr]
    assert Counter(lb.get_server().id for _ in range(4_000)).keys() == {s.id for s in servers}
