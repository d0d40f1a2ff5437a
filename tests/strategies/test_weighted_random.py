"""Weighted random (alias method): exact table, shares in proportion to weight, bounded memory."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies.conftest import membership

from zklb import LoadBalancer, WeightedRandom
from zklb.strategies import Picker
from zklb.strategies.weighted_random import WeightedRandomPicker, alias_table


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=60))
def test_the_alias_table_gives_each_index_exactly_its_share_of_the_weight(weights: list[int]) -> None:
    cut, alias = alias_table(weights)
    n, total = len(weights), sum(weights)
    mass = [0.0] * n
    for column in range(n):
        assert 0.0 <= cut[column] <= 1.0 + 1e-12
        mass[column] += cut[column] / n
        mass[alias[column]] += (1.0 - cut[column]) / n
    for index, weight in enumerate(weights):
        assert mass[index] == pytest.approx(weight / total, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=9), min_size=2, max_size=6),
    st.integers(min_value=0, max_value=2**32),
)
def test_picks_share_the_traffic_in_proportion_to_weight(weights: list[int], seed: int) -> None:
    picks = 20_000
    picker = WeightedRandom(random.Random(seed)).build(
        membership({f"i{k}": w for k, w in enumerate(weights)})
    )
    assert isinstance(picker, Picker)
    counts = Counter(picker.pick().id for _ in range(picks))
    total = sum(weights)
    for k, weight in enumerate(weights):
        p = weight / total
        # Five standard deviations of a binomial count: a false alarm about once in 3 million.
        assert abs(counts[f"i{k}"] - picks * p) <= 5 * (picks * p * (1 - p)) ** 0.5


def test_pick_excluding_keeps_the_proportions_of_the_rest() -> None:
    picker = WeightedRandom(random.Random(3)).build(membership({"a": 50, "b": 1, "c": 3}))
    counts = Counter(s.id for _ in range(4000) if (s := picker.pick_excluding({"a"})) is not None)
    assert set(counts) == {"b", "c"}
    assert 2.4 < counts["c"] / counts["b"] < 3.8
    assert picker.pick_excluding({"a", "b", "c"}) is None


def test_weights_up_to_10000_on_10000_instances_need_only_tables_of_n_entries() -> None:
    rng = random.Random(5)
    picker = WeightedRandomPicker(
        membership({f"i{k}": rng.randint(1, 10_000) for k in range(10_000)}), random.Random(1)
    )
    assert len(picker._cut) == len(picker._alias) == 10_000
    assert picker.pick().id.startswith("i")


def test_the_balancer_uses_it_by_name_and_ignores_a_key() -> None:
    lb = LoadBalancer.static(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], strategy="weighted_random")
    assert {lb.get_server(key="user-1").port for _ in range(200)} == {8001, 8002}
    with lb.acquire(key="user-1") as server:
        assert server.port in (8001, 8002)
