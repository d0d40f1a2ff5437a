"""Least request (Envoy's): distinct random choices, weight / (in_flight + 1) ** bias, lower peak load."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies.conftest import membership, uniform

from zklb import ConfigurationError, LeastRequest, LoadBalancer, PeakEwma
from zklb.strategies import Strategy
from zklb.strategies.least_request import LeastRequestPicker
from zklb.strategies.random import RandomChoice


@pytest.mark.parametrize(
    "settings_",
    [{"choice_count": 1}, {"choice_count": 11}, {"choice_count": 2.0}, {"active_request_bias": -1.0}],
)
def test_settings_out_of_range_are_configuration_errors(settings_: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        LeastRequest(**settings_)  # type: ignore[arg-type]


def test_choices_are_distinct_so_the_busier_of_two_is_never_taken() -> None:
    picker = LeastRequest(rng=random.Random(1)).build(membership({"a": 1, "b": 1}))
    picker.seed({"a": 1})
    assert {picker.pick().id for _ in range(200)} == {"b"}


def test_score_is_weight_over_in_flight_plus_one() -> None:
    picker = LeastRequest(rng=random.Random(2)).build(membership({"a": 3, "b": 1}))
    picker.seed({"a": 2})  # a: 3 / 3 = 1.0, b: 1 / 1 = 1.0: a tie, the first drawn wins
    assert {picker.pick().id for _ in range(200)} == {"a", "b"}
    picker.seed({"a": 3})  # a: 3 / 4 < 1.0
    assert {picker.pick().id for _ in range(200)} == {"b"}
    picker.seed({"a": 1})  # a: 3 / 2 > 1.0
    assert {picker.pick().id for _ in range(200)} == {"a"}


@pytest.mark.parametrize("choices", [3, 10])
def test_more_choices_find_the_idle_instance_more_often(choices: int) -> None:
    members = membership({f"i{k}": 1 for k in range(10)})
    picker = LeastRequest(choices, rng=random.Random(4)).build(members)
    picker.seed({f"i{k}": 5 for k in range(9)})
    share = Counter(picker.pick().id for _ in range(2000))["i9"] / 2000
    assert share == pytest.approx(1 - 0.9 * (9 - (choices - 1)) / 9 if choices < 10 else 1.0, abs=0.05)


def test_a_bias_of_zero_ignores_load() -> None:
    picker = LeastRequest(active_request_bias=0.0, rng=random.Random(5)).build(membership({"a": 2, "b": 1}))
    picker.seed({"a": 100})
    assert {picker.pick().id for _ in range(100)} == {"a"}


def test_pick_excluding_and_counts() -> None:
    picker = LeastRequest(rng=random.Random(6)).build(membership({"a": 1, "b": 1, "c": 1}))
    assert isinstance(picker, LeastRequestPicker)
    assert {s.id for _ in range(50) if (s := picker.pick_excluding({"a"})) is not None} == {"b", "c"}
    assert picker.pick_excluding({"a", "b", "c"}) is None
    instance = picker.pick()
    picker.acquired(instance)
    picker.released(instance, True, 0.01)
    picker.released(instance, True, 0.01)  # never below zero
    assert picker._in_flight == [0, 0, 0]


def peak_in_flight(strategy: Strategy, seed: int, instances: int = 10, held: int = 40) -> int:
    """The largest in-flight count any instance reaches under a steady concurrent load.

    ``held`` requests are in flight at any time; each step one more starts (acquire) and a random one
    of those in flight ends, as a pool of concurrent clients would: the same rng drives both runs.
    """
    lb = LoadBalancer.static([f"http://127.0.0.1:{9000 + k}" for k in range(instances)], strategy=strategy)
    rng = random.Random(seed)
    leases = []
    counts: Counter[str] = Counter()
    peak = 0
    for _ in range(2000):
        lease = lb.acquire()
        leases.append(lease)
        counts[lease.server.id] += 1
        peak = max(peak, counts[lease.server.id])
        if len(leases) > held:
            done = leases.pop(rng.randrange(len(leases)))
            counts[done.server.id] -= 1
            done.release()
    for lease in leases:
        lease.release()
    return peak


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_its_peak_in_flight_count_is_lower_than_randoms_on_the_same_load(seed: int) -> None:
    least = peak_in_flight(LeastRequest(rng=random.Random(seed)), seed)
    chance = peak_in_flight(RandomChoice(random.Random(seed)), seed)
    assert least < chance
    assert least <= 2 * (40 // 10) + 1  # within a few requests of an even spread


def test_one_instance() -> None:
    picker = LeastRequest().build(uniform(1))
    assert picker.pick().id == "i0"


@pytest.mark.parametrize("strategy", [LeastRequest(rng=random.Random(11)), PeakEwma(rng=random.Random(12))])
def test_the_two_choices_are_an_ordered_pair_drawn_uniformly(strategy: Strategy) -> None:
    # Both come from one random draw: with five loads all different, the less loaded of a uniform
    # distinct pair is the k-th least loaded with chance 2 (4 - k) / 20 (k = 0..4).
    picker = strategy.build(membership({f"i{k}": 1 for k in range(5)}))
    picker.seed({f"i{k}": k for k in range(5)})
    counts = Counter(picker.pick().id for _ in range(20_000))
    for k in range(5):
        assert counts[f"i{k}"] / 20_000 == pytest.approx(2 * (4 - k) / 20, abs=0.015)
