"""Least connections: least in flight per weight, exact comparisons, ties in turn, seeded counts."""

from __future__ import annotations

import random
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies.least_connections_reference import ReferenceLeastConnectionsPicker

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import LeastConnections, Picker, least_connections
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


def test_weights_whose_common_multiple_is_huge_use_counts_and_stay_exact() -> None:
    # With 200 more weights 999_000..999_199 the common multiple has about 2900 bits: loads are kept
    # as in_flight * max_weight**2 // weight instead. Those 200 carry a load of 2, out of the way.
    others = {f"z{w}": w for w in range(999_000, 999_200)}
    picker = picker_for(
        {"a": 999_983, "b": 999_979, "c": 2, **others},
        {"a": 999_983, "b": 999_978, "c": 2, **{i: 2 * w for i, w in others.items()}},
    )
    assert type(picker).__name__ == "_ScaledLeastConnectionsPicker"
    # a: 1, b: 1 - 1/999_979, c: 1. b is below by about one part in a million.
    assert ids(picker, 2) == ["b", "b"]
    taken = picker.acquire_pick()
    assert taken.id == "b"  # b: 999_979 / 999_979 = 1, a three-way tie now
    assert sorted(ids(picker, 3)) == ["a", "b", "c"]
    picker.released(taken, *OK)
    assert (picker.in_flight("a"), picker.in_flight("b"), picker.in_flight("c")) == (999_983, 999_978, 2)


# -- acquire_pick: pick() + acquired() in one ------------------------------------------------------


def test_acquire_pick_counts_the_request_and_idle_instances_take_turns() -> None:
    picker = picker_for({"c": 1, "a": 1, "b": 1})
    assert [picker.acquire_pick().id for _ in range(3)] == ["a", "b", "c"]
    assert [picker.in_flight(i) for i in "abc"] == [1, 1, 1]
    assert sorted(p.id for p in (picker.acquire_pick(), picker.acquire_pick())) == ["a", "b"]
    assert [picker.in_flight(i) for i in "abc"] == [2, 2, 1]


def test_an_instance_back_at_the_lowest_load_queues_behind_the_others() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1})
    for _ in range(2):  # a loop of acquire_pick + released visits every instance in turn
        order = []
        for _ in range(3):
            server = picker.acquire_pick()
            order.append(server.id)
            picker.released(server, *OK)
        assert order == ["a", "b", "c"]
    a = picker.acquire_pick()
    b = picker.acquire_pick()
    picker.released(b, *OK)
    picker.released(a, *OK)
    assert [picker.acquire_pick().id for _ in range(3)] == ["c", "b", "a"]


def test_acquire_pick_shares_requests_in_proportion_to_weight() -> None:
    picker = picker_for({"a": 3, "b": 1, "c": 2})
    for _ in range(60):
        picker.acquire_pick()
    assert [picker.in_flight(i) for i in "abc"] == [30, 10, 20]


def test_a_release_below_the_lowest_load_is_picked_next_and_the_others_keep_their_turns() -> None:
    members = membership({"a": 1, "b": 1, "c": 1, "d": 2})
    picker = LeastConnectionsPicker(members)
    picker.seed({"a": 2, "b": 2, "c": 2, "d": 6})
    picker.released(members.by_id["b"], *OK)  # b: 1, alone at the lowest load
    assert ids(picker, 2) == ["b", "b"]
    assert picker.acquire_pick().id == "b"
    assert_consistent(picker)
    assert [picker.acquire_pick().id for _ in range(3)] == ["a", "b", "c"]  # b kept its place
    # d: 6 / 2 = 3 ties a, b and c, ahead of them in the queue. A release takes it to 2.5, the
    # lowest: it is picked next, back to 3, and keeps its place.
    picker.released(members.by_id["d"], *OK)
    assert picker.acquire_pick().id == "d"
    assert_consistent(picker)
    assert [picker.acquire_pick().id for _ in range(4)] == ["d", "a", "b", "c"]
    assert [picker.in_flight(i) for i in "abcd"] == [4, 4, 4, 7]
    assert_consistent(picker)


def test_other_changes_while_a_release_dips_below_the_lowest_load() -> None:
    members = membership({"a": 1, "b": 1, "c": 1})
    picker = LeastConnectionsPicker(members)
    picker.seed({"a": 2, "b": 2, "c": 2})
    a, b, c = (members.by_id[i] for i in "abc")
    picker.released(b, *OK)  # b: 1, the lowest
    picker.released(c, *OK)  # c: 1 too
    assert_consistent(picker)
    assert sorted(ids(picker, 2)) == ["b", "c"]
    picker.acquired(a)  # a: 3
    assert_consistent(picker)
    assert sorted(p.id for p in (picker.acquire_pick(), picker.acquire_pick())) == ["b", "c"]
    assert [picker.in_flight(i) for i in "abc"] == [3, 2, 2]
    assert sorted(ids(picker, 2)) == ["b", "c"]
    assert_consistent(picker)


def test_an_instance_taken_long_ago_is_found_when_the_lowest_load_runs_out() -> None:
    picker = picker_for({"a": 1, "b": 1, "c": 1})
    held = picker.acquire_pick()  # a: 1, for a long time
    for _ in range(10):  # b and c take many turns meanwhile
        picker.released(picker.acquire_pick(), *OK)
    picker.acquire_pick()
    picker.acquire_pick()  # b and c: 1, nothing left at 0
    assert_consistent(picker)
    assert sorted(ids(picker, 3)) == ["a", "b", "c"]
    assert held.id == "a"


def test_long_cycles_keep_the_ring_and_the_parked_lists_bounded() -> None:
    rng = random.Random(5)
    weights = {f"i{k:02d}": rng.randint(1, 4) for k in range(20)}
    members = membership(weights)
    picker = LeastConnectionsPicker(members)
    held = [picker.acquire_pick() for _ in range(8)]
    for step in range(20_000):
        k = rng.randrange(len(held))
        picker.released(held[k], *OK)
        held[k] = picker.acquire_pick()
        if step % 500 == 0:
            # Now and then everything gets busy, then quiet again: loads wander up and down.
            extra = [picker.acquire_pick() for _ in range(rng.randrange(60))]
            for server in extra:
                picker.released(server, *OK)
        assert len(picker._ring) <= picker._limit + len(weights) + 1
    assert_consistent(picker)
    stored = sum(len(items) for items, _, _ in picker._parked.values())
    assert stored <= 3 * len(weights) + 256
    assert len(picker._heap) <= 2 * len(picker._parked) + 33


# -- exactness against a brute-force reference ------------------------------------------------------

weight_lists = st.one_of(
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
    st.lists(st.sampled_from([1, 3, 999_961, 999_979, 999_983]), min_size=1, max_size=6),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(["take", "take", "release", "release", "acquired", "exclude", "seed", "other"]),
        st.integers(min_value=0, max_value=1_000),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(
    weights=weight_lists,
    initial=st.lists(st.integers(min_value=0, max_value=4), max_size=6),
    ops=steps,
    limit=st.sampled_from([1, 2, 5, None]),
    scaled=st.booleans(),
)
def test_matches_a_brute_force_reference(
    weights: list[int], initial: list[int], ops: list[tuple[str, int]], limit: int | None, scaled: bool
) -> None:
    names = [f"i{k}" for k in range(len(weights))]
    members = membership(dict(zip(names, weights, strict=True)))
    by_id = members.by_id
    # scaled: the variant for weights whose common multiple is too large (keeps counts).
    with patch.object(least_connections, "_MAX_MULTIPLE", 0 if scaled else least_connections._MAX_MULTIPLE):
        picker = LeastConnectionsPicker(members)
    assert (type(picker).__name__ == "_ScaledLeastConnectionsPicker") == scaled
    if limit is not None:
        picker._limit = limit  # cut the ring's consumed part off very often
    reference = ReferenceLeastConnectionsPicker(members)
    reference.seed(dict(zip(names, initial, strict=False)))
    counts = reference.counts
    picker.seed(counts)
    held = [name for name in names for _ in range(counts[name])]  # requests in flight

    def check() -> None:
        assert {i: picker.in_flight(i) for i in names} == reference.counts
        lowest = reference.least_ids()
        # As many consecutive picks as there are least-loaded instances visit each of them once.
        assert {picker.pick().id for _ in range(len(lowest))} == lowest
        assert_consistent(picker)

    check()
    for op, k in ops:
        if op == "take":
            expected = reference.least_ids()
            taken = picker.acquire_pick()
            assert taken.id in expected
            reference.acquired(taken)
            held.append(taken.id)
        elif op == "release" and held:
            name = held.pop(k % len(held))
            reference.released(by_id[name], *OK)
            picker.released(by_id[name], *OK)
        elif op == "acquired":
            name = names[k % len(names)]
            reference.acquired(by_id[name])
            held.append(name)
            picker.acquired(by_id[name])
        elif op == "exclude":
            excluded = {names[k % len(names)]}
            found = picker.pick_excluding(excluded)
            nearest = reference.pick_excluding(excluded)
            if nearest is None:
                assert found is None  # every instance excluded
            else:
                assert found is not None and found.id in reference.least_ids(excluded)
        elif op == "seed":
            picker.seed({**reference.counts, "gone": 3})
        else:
            # Ignored: releases of idle instances, and of instances not in the snapshot.
            idle = [i for i in names if reference.counts[i] == 0]
            if idle:
                picker.released(by_id[idle[k % len(idle)]], *OK)
            stranger = ServiceInstance(id="stranger", host="127.0.0.1", port=9999)
            picker.released(stranger, *OK)
            picker.acquired(stranger)
        check()


def assert_consistent(picker: LeastConnectionsPicker) -> None:
    """White-box check of the structure described in the module docstring."""
    n = len(picker._instances)
    keys = picker._keys
    load = [key >> 1 for key in keys]
    lo = picker._lo
    assert lo == min(load)
    ring, pos = picker._ring, picker._pos
    # The pending part is exactly the instances at the lowest load, once each, all filed.
    pending = ring[pos:]
    assert pending
    assert sorted(pending) == [i for i in range(n) if load[i] == lo]
    assert all(keys[i] == 2 * lo for i in pending)
    assert picker._stop <= len(ring)
    dipped = picker._saved_end >= 0
    # Parked lists: the filed instances at each load above the lowest, with their positions.
    parked: set[int] = set()
    filed = dead = empty = 0
    for parked_load, (items, start, base) in picker._parked.items():
        assert parked_load > lo
        live = items[start:]
        assert len(set(live)) == len(live)
        for k, i in enumerate(live):
            assert picker._where[i] == base + start + k
            if not (dipped and i == picker._dipped):
                assert keys[i] == 2 * parked_load
        if not live:
            assert start == 0  # only lists without consumed entries are kept empty
            empty += 1
        filed += len(live)
        dead += start
        parked.update(live)
    assert (filed, dead, empty) == (picker._filed, picker._dead, picker._empty)
    assert set(picker._parked) <= set(picker._heap)
    if not dipped:
        records = set(ring[picker._mark : pos])
        for i in range(n):
            if keys[i] & 1:
                assert load[i] > lo and i in records  # in no list: taken since the last filing
            elif load[i] != lo:
                assert i in picker._parked[load[i]][0][picker._parked[load[i]][1] :]
        for k in range(pos, min(picker._synced, len(ring))):
            assert picker._where[ring[k]] == picker._base + k
        return
    # Hidden under a dip: ring[_saved_pos:_saved_end] are the instances at _saved_lo (the dipped
    # one's entry in its list stays until it is back there).
    end, start, hidden_lo = picker._saved_end, picker._saved_pos, picker._saved_lo
    assert start <= end <= pos and hidden_lo > lo
    hidden = ring[start:end]
    assert len(set(hidden)) == len(hidden)
    x = picker._dipped
    assert set(hidden) - {x} == {i for i in range(n) if i != x and keys[i] == 2 * hidden_lo}
    tail = set(ring[end:])
    assert all(load[i] >= hidden_lo for i in range(n) if i not in tail)
    records = set(ring[picker._mark : start])
    for i in range(n):
        if i != x and keys[i] & 1:
            assert i in records
        elif i != x and load[i] not in (lo, hidden_lo):
            assert i in parked
    for k in range(start, min(picker._synced, end)):
        assert picker._where[ring[k]] == picker._base + k
