"""Smooth weighted round robin: nginx's exact sequence, the window property, and bounded memory."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from bisect import bisect_right
from collections import Counter
from functools import reduce
from itertools import accumulate
from math import gcd

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import Picker, WeightedRoundRobin
from zklb.strategies.weighted import WeightedRoundRobinPicker, _golden_stride, nginx_schedule

weight_lists = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8)


def membership(weights: list[int] | dict[str, int]) -> Membership:
    pairs = (
        weights.items() if isinstance(weights, dict) else ((f"i{k:03d}", w) for k, w in enumerate(weights))
    )
    return Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=i, host="127.0.0.1", port=8000 + k, weight=w) for k, (i, w) in enumerate(pairs)
        ),
    )


def picker_for(weights: list[int] | dict[str, int], **options: int) -> WeightedRoundRobinPicker:
    picker = WeightedRoundRobin(**options).build(membership(weights))
    assert isinstance(picker, WeightedRoundRobinPicker)
    return picker


def reference_nginx(weights: list[int], picks: int) -> list[int]:
    """nginx's ngx_http_upstream_get_peer, straight: O(n) per pick, first maximum wins."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(picks):
        best = -1
        for i, weight in enumerate(weights):
            current[i] += weight
            if best == -1 or current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


def reduced(weights: list[int]) -> list[int]:
    divisor = reduce(gcd, weights)
    return [w // divisor for w in weights]


# -- nginx mode --------------------------------------------------------------------------------------


def test_the_nginx_example() -> None:
    picker = picker_for({"c": 1, "a": 5, "b": 1})
    assert picker.mode == "nginx"
    assert "".join(picker.pick().id for _ in range(14)) == "aabacaa" * 2


def test_weights_are_reduced_by_their_gcd() -> None:
    picker = picker_for({"a": 10, "b": 2, "c": 2})
    assert picker.cycle_length == 7
    assert "".join(picker.pick().id for _ in range(7)) == "aabacaa"


@pytest.mark.parametrize("limit", [1, 100])
def test_equal_weights_are_plain_round_robin_whatever_the_limit(limit: int) -> None:
    picker = picker_for({"b": 3, "a": 3, "c": 3}, schedule_limit=limit)
    assert [picker.pick().id for _ in range(4)] == ["a", "b", "c", "a"]
    assert picker.mode == "nginx"


@pytest.mark.parametrize(
    "weights",
    [[5, 1, 1], [1, 2, 3, 4], [4, 4, 2, 2, 1], [7, 3], [1, 1, 1, 9], [2, 3, 2, 3, 2, 3, 10]],
)
def test_matches_reference_nginx(weights: list[int]) -> None:
    picker = picker_for(weights)
    total = sum(reduced(weights))
    got = [int(picker.pick().id[1:]) for _ in range(2 * total)]
    assert got == reference_nginx(reduced(weights), 2 * total)


@given(weight_lists)
def test_identical_to_reference_nginx_over_two_cycles(weights: list[int]) -> None:
    picker = picker_for(weights)
    assert picker.mode == "nginx"
    total = sum(reduced(weights))
    got = [int(picker.pick().id[1:]) for _ in range(2 * total)]
    assert got == reference_nginx(reduced(weights), 2 * total)


@given(weight_lists)
def test_nginx_schedule_function_matches_reference(weights: list[int]) -> None:
    assert nginx_schedule(weights) == reference_nginx(weights, sum(weights))


# -- the window property, in every mode ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "mode"),
    [({}, "nginx"), ({"build_budget": 1}, "stride"), ({"schedule_limit": 1}, "streamed")],
)
@given(weights=weight_lists)
def test_every_aligned_window_has_exact_counts(
    options: dict[str, int], mode: str, weights: list[int]
) -> None:
    picker = picker_for(weights, **options)
    if len(set(weights)) > 1:
        assert picker.mode == mode
    small = reduced(weights)
    window = sum(small)
    assert picker.cycle_length == window
    expected = Counter({f"i{k:03d}": w for k, w in enumerate(small)})
    for _ in range(3):
        assert Counter(picker.pick().id for _ in range(window)) == expected


@given(weights=st.lists(st.integers(min_value=1, max_value=300), min_size=2, max_size=12))
@settings(max_examples=50)
def test_stride_picks_are_spread_out(weights: list[int]) -> None:
    picker = picker_for(weights, schedule_limit=1)
    small = reduced(weights)
    window = sum(small)
    last: dict[str, int] = {}
    for k in range(2 * window):
        instance_id = picker.pick().id
        if instance_id in last:
            even_gap = window / small[int(instance_id[1:])]
            assert k - last[instance_id] <= 3 * even_gap + 1
        last[instance_id] = k


@given(weights=weight_lists)
@settings(max_examples=50)
def test_stride_and_streamed_modes_give_the_same_sequence(weights: list[int]) -> None:
    assume(len(set(weights)) > 1)  # equal weights are plain round robin in every mode
    precomputed = picker_for(weights, build_budget=1)
    streamed = picker_for(weights, schedule_limit=1)
    picks = 2 * precomputed.cycle_length
    assert [precomputed.pick() for _ in range(picks)] == [streamed.pick() for _ in range(picks)]


# -- mode choice and memory ---------------------------------------------------------------------------


def test_schedule_limit_decides_between_precomputed_and_streamed() -> None:
    weights = [3, 2, 2]  # cycle of 7
    at_limit = picker_for(weights, schedule_limit=7)
    assert (at_limit.mode, at_limit.schedule_length) == ("nginx", 7)
    over = picker_for(weights, schedule_limit=6)
    assert (over.mode, over.schedule_length) == ("streamed", 0)


def test_huge_weights_do_not_build_a_schedule_proportional_to_their_sum() -> None:
    rng = random.Random(7)
    members = membership([rng.randint(1, 10_000) for _ in range(10_000)])
    tracemalloc.start()
    try:
        picker = WeightedRoundRobin().build(members)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(picker, WeightedRoundRobinPicker)
    assert picker.cycle_length > 10_000_000
    assert picker.mode == "streamed"
    assert picker.schedule_length == 0
    assert held < 8 * 1024 * 1024  # O(n): bucket table and prefix sums, not 50 million entries
    assert all(picker.pick() in members for _ in range(1000))


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule_limit"):
        WeightedRoundRobin(schedule_limit=0)
    with pytest.raises(ValueError, match="build_budget"):
        WeightedRoundRobin(build_budget=True)


# -- the rest of the picker interface -----------------------------------------------------------------


def test_picker_satisfies_the_protocol_and_ignores_load() -> None:
    members = membership({"a": 5, "b": 1, "c": 1})
    picker = WeightedRoundRobin().build(members)
    assert isinstance(picker, Picker)
    picker.seed({"a": 100})
    picker.acquired(members.by_id["a"])
    picker.released(members.by_id["a"], True, 0.1)
    assert "".join(picker.pick().id for _ in range(7)) == "aabacaa"


def test_pick_excluding_continues_the_sequence_without_the_excluded() -> None:
    picker = picker_for({"a": 5, "b": 1, "c": 1})
    found = picker.pick_excluding({"a"})  # sequence a a b ...: skips two a's
    assert found is not None and found.id == "b"
    assert picker.pick().id == "a"


def test_pick_excluding_everything_is_none() -> None:
    picker = picker_for({"a": 5, "b": 1})
    assert picker.pick_excluding({"a", "b"}) is None


@pytest.mark.parametrize("options", [{}, {"schedule_limit": 1}])
def test_pick_excluding_falls_back_to_weighted_choice_among_the_rest(options: dict[str, int]) -> None:
    # "a" has nearly all the weight, so the shared sequence is mostly a's: the fallback must kick in.
    picker = picker_for({"a": 100_000, "b": 1, "c": 3}, **options)
    counts: Counter[str] = Counter()
    for _ in range(400):
        found = picker.pick_excluding({"a"})
        assert found is not None
        counts[found.id] += 1
    assert set(counts) == {"b", "c"}
    assert counts["c"] > counts["b"]


def test_empty_membership_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        WeightedRoundRobinPicker(Membership(service="svc"))


@given(
    weights=st.lists(st.integers(min_value=1, max_value=5_000), min_size=2, max_size=40),
    aligned=st.booleans(),
)
@settings(max_examples=60)
def test_streamed_picks_own_the_golden_stride_positions(weights: list[int], aligned: bool) -> None:
    if aligned:
        # Boundaries on bucket starts (buckets of 128 or 256 here): every bucket has one owner.
        weights = [(1 + w % 15) * 256 for w in weights] + [1]
    small = reduced(weights)
    assume(len(set(small)) > 1)
    picker = picker_for(weights, schedule_limit=1)
    total = sum(small)
    stride = _golden_stride(total)
    ends = list(accumulate(small))
    for k in range(min(3 * total, 4_000)):
        assert int(picker.pick().id[1:]) == bisect_right(ends, k * stride % total)


# -- slow start: ramped picks -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"build_budget": 1}, {"schedule_limit": 1}])
def test_ramped_picks_scale_each_weight_by_its_factor(options: dict[str, int]) -> None:
    picker = picker_for({"a": 5, "b": 3, "c": 1, "d": 1}, **options)
    assert picker.ramped_pick({}) == picker.pick  # nothing ramps: the plain pick itself
    ramped = picker.ramped_pick({"a": 0.5, "c": 0.1})
    picks = 60_000
    seen = Counter(ramped().id for _ in range(picks))
    scaled = {"a": 2.5, "b": 3.0, "c": 0.1, "d": 1.0}
    for key, weight in scaled.items():
        assert seen[key] / picks == pytest.approx(weight / sum(scaled.values()), rel=0.04, abs=0.001), seen


def test_ramped_picks_keep_a_ramping_instances_turns_spread_out() -> None:
    picker = picker_for({"a": 4, "b": 4, "c": 2})
    ramped = picker.ramped_pick({"a": 0.25})
    sequence = [ramped().id for _ in range(2_000)]
    gaps = [j - i for i, j in itertools.pairwise(k for k, key in enumerate(sequence) if key == "a")]
    # a keeps one turn in four of its own: one pick in about 7 (1 / (1 + 4 + 2)), at even gaps.
    assert max(gaps) <= 2 * min(gaps) + 2
    assert sum(gaps) / len(gaps) == pytest.approx(7.0, rel=0.05)
