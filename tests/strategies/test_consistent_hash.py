"""Consistent hashing: stable across processes, minimal disruption, weights honoured, skips and returns."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from bisect import bisect_left
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies.conftest import membership, uniform

from zklb import ConsistentHash, HealthPolicy, LoadBalancer, ServiceInstance
from zklb.membership import Membership
from zklb.strategies.consistent_hash import ConsistentHashPicker, key_position

KEYS = [f"user-{k}" for k in range(10_000)]


def ring(members: Membership) -> ConsistentHashPicker:
    picker = ConsistentHash().build(members)
    assert isinstance(picker, ConsistentHashPicker)
    return picker


def owners(picker: ConsistentHashPicker, keys: list[str] = KEYS) -> dict[str, str]:
    found = {}
    for key in keys:
        owner = picker.pick_key(key)
        assert owner is not None
        found[key] = owner.id
    return found


def test_another_process_maps_every_key_to_the_same_instance() -> None:
    weights = {f"node-{k}": 1 + k % 3 for k in range(12)}
    here = owners(ring(membership(weights)), KEYS[:2000])
    script = (
        "import json, sys\n"
        "from tests.strategies.conftest import membership\n"
        "from zklb import ConsistentHash\n"
        "weights, keys = json.load(sys.stdin)\n"
        "picker = ConsistentHash().build(membership(weights))\n"
        "print(json.dumps({k: picker.pick_key(k).id for k in keys}))\n"
    )
    # A fresh interpreter with another hash seed: Python's own hash() would differ, this must not.
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([weights, KEYS[:2000]]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        cwd=Path(__file__).parents[2],
    )
    assert json.loads(done.stdout) == here


def test_key_positions_are_fixed_values() -> None:
    # Pinned: a change here would remap every key of every deployed client.
    assert key_position("user-42") == key_position(b"user-42") == 0x7D06B873
    assert key_position(42) == key_position("42")
    with pytest.raises(TypeError):
        key_position(4.2)  # type: ignore[arg-type]


def test_when_one_of_n_leaves_its_keys_move_and_no_other_key_does() -> None:
    n = 10
    before = owners(ring(uniform(n)))
    for gone in range(n):
        rest = Membership("svc", 2, tuple(i for i in uniform(n).instances if i.id != f"i{gone}"))
        after = owners(ring(rest))
        moved = {k for k in KEYS if before[k] != after[k]}
        assert moved == {k for k in KEYS if before[k] == f"i{gone}"}
        assert len(moved) <= 1.3 * len(KEYS) / n


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=3, max_size=15),
    st.data(),
)
def test_disruption_is_minimal_for_any_membership(weights: list[int], data: st.DataObject) -> None:
    members = membership({f"n{k}": w for k, w in enumerate(weights)})
    gone = data.draw(st.integers(min_value=0, max_value=len(weights) - 1))
    keys = KEYS[:3000]
    before = owners(ring(members), keys)
    rest = Membership("svc", 2, tuple(i for i in members.instances if i.id != f"n{gone}"))
    after = owners(ring(rest), keys)
    for key in keys:
        if before[key] != f"n{gone}":
            assert after[key] == before[key]
        else:
            assert after[key] != f"n{gone}"
    # And it comes back: the same keys, to the same instance.
    assert owners(ring(members), keys) == before


def test_weight_two_gets_about_twice_the_keys() -> None:
    counts = Counter(owners(ring(membership({"a": 1, "b": 2, "c": 1, "d": 2}))).values())
    assert 1.6 < counts["b"] / counts["a"] < 2.4
    assert 1.6 < counts["d"] / counts["c"] < 2.4
    assert 0.8 < (counts["b"] + counts["d"]) / (2 * (counts["a"] + counts["c"])) < 1.2


def test_balance_over_ten_instances() -> None:
    counts = Counter(owners(ring(uniform(10))).values())
    assert max(counts.values()) <= 1.3 * len(KEYS) / 10
    assert min(counts.values()) >= 0.7 * len(KEYS) / 10


def test_skipped_instances_pass_their_keys_to_the_next_choice() -> None:
    picker = ring(uniform(5))
    before = owners(picker)
    for key in KEYS[:500]:
        first = before[key]
        second = picker.pick_key(key, {first})
        assert second is not None and second.id != first
        third = picker.pick_key(key, {first, second.id})
        assert third is not None and third.id not in (first, second.id)
    assert picker.pick_key("x", {f"i{k}" for k in range(5)}) is None


def test_a_balancer_sends_an_ejected_instances_keys_elsewhere_and_back() -> None:
    clock = [0.0]
    lb = LoadBalancer.static(
        [ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k) for k in range(4)],
        strategy="consistent_hash",
        health=HealthPolicy(consecutive_failures=1, base_ejection_time=30.0, max_ejection_percent=50.0),
        clock=lambda: clock[0],
    )
    keys = KEYS[:400]
    home = {k: lb.get_server(key=k).id for k in keys}
    assert {lb.get_server(key=k).id for k in keys for _ in range(2)} == set(home.values())
    victim = home[keys[0]]
    lb.report(lb.membership.by_id[victim], success=False)
    assert lb.pool_stats().ejected == 1
    moved = {k: lb.get_server(key=k).id for k in keys}
    assert all(moved[k] != victim for k in keys)
    assert all(moved[k] == home[k] for k in keys if home[k] != victim)
    with lb.acquire(key=keys[0]) as server:
        assert server.id == moved[keys[0]]
    clock[0] += 31.0  # the ejection ends: the keys come home
    assert {k: lb.get_server(key=k).id for k in keys} == home
    with lb.acquire(key=keys[0]) as server:
        assert server.id == victim
    # A retry with the key goes to the key's next choice, not to a random instance.
    with lb.acquire(key=keys[0], exclude=[victim]) as server:
        assert server.id == moved[keys[0]]


def test_without_a_key_it_picks_at_random() -> None:
    picker = ConsistentHash(rng=random.Random(3)).build(uniform(4))
    counts = Counter(picker.pick().id for _ in range(4000))
    assert all(800 < c < 1200 for c in counts.values())
    assert picker.pick_excluding({"i0", "i1", "i2"}) is not None
    assert picker.pick_excluding({"i0", "i1", "i2", "i3"}) is None


def test_other_strategies_ignore_the_key() -> None:
    lb = LoadBalancer.static([f"http://127.0.0.1:{8000 + k}" for k in range(3)], strategy="round_robin")
    assert sorted(lb.get_server(key="same").port for _ in range(3)) == [8000, 8001, 8002]


@pytest.mark.parametrize("per_weight", [1, 3, 100])
def test_a_key_goes_to_the_first_point_at_or_after_it_wrapping_past_the_last(per_weight: int) -> None:
    # The bucketed lookup against a plain binary search over the whole ring; with one point per
    # instance, most keys fall past the last point and must wrap to the first.
    picker = ConsistentHash(points_per_weight=per_weight).build(uniform(7))
    assert isinstance(picker, ConsistentHashPicker)
    points = list(picker._points)
    wrapped = 0
    for key in KEYS[:5000]:
        i = bisect_left(points, key_position(key))
        wrapped += i == len(points)
        assert picker.pick_key(key) is picker._owners[i % len(points)]
    assert wrapped > 0 or per_weight == 100  # 700 points: a key past the last is rare
