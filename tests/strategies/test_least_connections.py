"""Least connections: least in flight per weight, exact comparisons, ties in turn, seeded counts."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import LeastConnections, Picker
from zklb.strategies.least_connections import LeastConnectionsPicker

OK = (True, 0.01)  # success, latency


def membership(weights: dict[str, int]) -> Membership:
    return Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=i, host="127.0.0.1", port=8000 + k, weight=w)
            for k, (i, w) in enumerate(weights.items())
        ),
    )


def picker_for(weights: dict[str, int], in_flight: dict[str, int] | None = None) -> LeastConnectionsPicker:
    picker = LeastConnections().build(membership(weights))
    assert isinstance(picker, LeastConnectionsPicker)
    if in_flight:
        picker.seed(in_flight)
    return picker


def ids(picker: LeastConnectionsPicker, picks: int) -> list[str]:
    return [picker.pick().id for _ in range(picks)]


def test_idle_instances_take_turns_in_id_order() -> None:
    picker = picker_for({"c": 1, "a": 1, "b": 1})
    assert ids(picker, 6) == ["a", "b", "c", "a", "b", "c"]


def test_picker_satisfies_the_protocol() -> None:
    assert isinstance(picker_for({"a": 1}), Picker)


def test_seeded_counts_are_honoured() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 0, "c": 1})
    assert ids(picker, 3) == ["b", "b", "b"]
    assert picker.in_flight("a") == 2


def test_seed_ignores_unknown_ids_and_negative_counts() -> None:
    picker = picker_for({"a": 1, "b": 1}, {"a": -3, "gone": 7, "b": 1})
    assert (picker.in_flight("a"), picker.in_flight("b"), picker.in_flight("gone")) == (0, 1, 0)
    assert ids(picker, 2) == ["a", "a"]


def test_load_is_relative_to_weight() -> None:
    # a: 2 in flight / weight 3 = 0.67 beats b: 1 / 1 = 1.
    picker = picker_for({"a": 3, "b": 1}, {"a": 2, "b": 1})
    assert ids(picker, 2) == ["a", "a"]
    # a: 3 / 3 = 1 ties b: 1 / 1: they take turns.
    picker.acquired(picker.pick())
    assert sorted(ids(picker, 2)) == ["a", "b"]


def test_loads_that_differ_by_one_part_in_a_trillion_are_ordered_exactly() -> None:
    # b: 999_998 / 999_999 = 1 - 1/999_999 is below a: 999_999 / 1_000_000 = 1 - 1/1_000_000.
    picker = picker_for({"a": 1_000_000, "b": 999_999}, {"a": 999_999, "b": 999_998})
    assert ids(picker, 2) == ["b", "b"]
    picker.released(picker.pick(), *OK)  # b: 999_997 / 999_999, further below
    picker.acquired(picker.pick())
    picker.acquired(picker.pick())  # b: 999_999 / 999_999 = 1, now above a
    assert ids(picker, 2) == ["a", "a"]
    # Equal fractions (2/4 == 1/2) are a tie, so both take turns.
    tie = picker_for({"a": 4, "b": 2}, {"a": 2, "b": 1})
    assert sorted(ids(tie, 2)) == ["a", "b"]


def test_equal_weights_above_one_compare_counts() -> None:
    picker = picker_for({"a": 7, "b": 7}, {"a": 1})
    assert ids(picker, 2) == ["b", "b"]


def test_ties_rotate_among_the_least_loaded_only() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1, "d": 1}, {"a": 1})
    picks = ids(picker, 6)
    assert "a" not in picks
    assert sorted(picks[:3]) == ["b", "c", "d"]
    assert sorted(picks[3:]) == ["b", "c", "d"]


def test_acquired_moves_an_instance_up_and_released_moves_it_back() -> None:
    members = membership({"a": 1, "b": 1})
    picker = LeastConnectionsPicker(members)
    a, b = members.by_id["a"], members.by_id["b"]
    picker.acquired(a)
    assert ids(picker, 2) == ["b", "b"]
    picker.acquired(b)
    picker.acquired(b)
    assert picker.pick() is a
    picker.released(b, *OK)
    picker.released(b, *OK)
    picker.released(a, *OK)
    assert sorted(p.id for p in (picker.pick(), picker.pick())) == ["a", "b"]


def test_released_never_goes_below_zero_and_unknown_instances_are_ignored() -> None:
    members = membership({"a": 1, "b": 1})
    picker = picker_for({"a": 1, "b": 1})
    stranger = ServiceInstance(id="stranger", host="127.0.0.1", port=9999)
    picker.released(members.by_id["a"], *OK)
    picker.acquired(stranger)
    picker.released(stranger, *OK)
    assert picker.in_flight("a") == 0
    picker.acquired(members.by_id["b"])
    assert ids(picker, 2) == ["a", "a"]


def test_pick_excluding_takes_the_least_loaded_of_the_rest() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1}, {"a": 0, "b": 2, "c": 1})
    found = picker.pick_excluding({"a"})
    assert found is not None and found.id == "c"
    assert picker.pick_excluding({"a", "b", "c"}) is None
    nothing_excluded = picker.pick_excluding(())
    assert nothing_excluded is not None and nothing_excluded.id == "a"


def test_pick_excluding_rotates_among_equally_loaded() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1, "d": 1})
    seen = {found.id for _ in range(8) if (found := picker.pick_excluding({"a"})) is not None}
    assert seen == {"b", "c", "d"}


def test_empty_membership_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        LeastConnectionsPicker(Membership(service="svc"))


operations = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=5)), min_size=0, max_size=60
)


@given(
    weights=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=6),
    seed=st.lists(st.integers(min_value=0, max_value=6), max_size=6),
    ops=operations,
)
def test_always_picks_a_least_loaded_instance_and_cycles_through_all_of_them(
    weights: list[int], seed: list[int], ops: list[tuple[bool, int]]
) -> None:
    names = [f"i{k}" for k in range(len(weights))]
    members = membership(dict(zip(names, weights, strict=True)))
    picker = LeastConnectionsPicker(members)
    counts = dict.fromkeys(names, 0)
    counts.update(zip(names, seed, strict=False))
    picker.seed(counts)

    def check() -> None:
        loads = {i: Fraction(counts[i], members.by_id[i].weight) for i in names}
        least = min(loads.values())
        lowest = {i for i in names if loads[i] == least}
        # As many consecutive picks as there are least-loaded instances visit each of them once.
        assert {picker.pick().id for _ in range(len(lowest))} == lowest

    check()
    for acquire, k in ops:
        name = names[k % len(names)]
        if acquire:
            counts[name] += 1
            picker.acquired(members.by_id[name])
        elif counts[name] > 0:
            counts[name] -= 1
            picker.released(members.by_id[name], *OK)
        assert picker.in_flight(name) == counts[name]
        check()


def assert_consistent(picker: LeastConnectionsPicker) -> None:
    """White-box check of the level structure (see the module docstring)."""
    levels = picker._levels
    assert sorted(picker._heap) == sorted(levels)
    assert picker._empty == sum(1 for level in levels.values() if not level)
    for i, key in enumerate(picker._keys):
        assert levels[key][picker._positions[i]] == i
    assert sum(len(level) for level in levels.values()) == len(picker._keys)
    assert picker._lowest_key == min(key for key, level in levels.items() if level)
    assert picker._lowest is levels[picker._lowest_key]


def test_long_random_walk_keeps_the_structure_consistent_and_prunes_empty_levels() -> None:
    rng = random.Random(11)
    weights = {f"i{k}": rng.randint(1, 50) for k in range(10)}
    members = membership(weights)
    picker = LeastConnectionsPicker(members)
    counts = dict.fromkeys(weights, 0)
    most_levels = 0
    for step in range(20_000):
        name = rng.choice(list(weights))
        # Drift up for a while, then down, so that many distinct levels come and go.
        if (step // 2_000) % 2 == 0 or counts[name] == 0:
            counts[name] += 1
            picker.acquired(members.by_id[name])
        else:
            counts[name] -= 1
            picker.released(members.by_id[name], *OK)
        most_levels = max(most_levels, len(picker._levels))
        if step % 97 == 0:
            assert_consistent(picker)
            loads = {i: Fraction(counts[i], weights[i]) for i in weights}
            assert loads[picker.pick().id] == min(loads.values())
    assert_consistent(picker)
    assert len(picker._levels) <= 2 * len(weights) + 33  # pruned, not one list per level ever seen
    assert most_levels > len(weights)
