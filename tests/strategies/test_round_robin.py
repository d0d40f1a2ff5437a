"""Round robin: exact order, exclusion for retries, no-op load hooks."""

from __future__ import annotations

import pytest

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import Picker, RoundRobin
from zklb.strategies.round_robin import RoundRobinPicker


def membership(*ids: str) -> Membership:
    return Membership(
        service="svc",
        version=1,
        instances=tuple(ServiceInstance(id=i, host="127.0.0.1", port=8000 + k) for k, i in enumerate(ids)),
    )


def test_each_instance_once_per_cycle_in_id_order_starting_at_the_first() -> None:
    picker = RoundRobin().build(membership("c", "a", "b"))
    assert [picker.pick().id for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_picker_satisfies_the_protocol() -> None:
    picker = RoundRobin().build(membership("a"))
    assert isinstance(picker, Picker)
    assert RoundRobin.name == "round_robin"


def test_load_hooks_do_not_change_the_order() -> None:
    members = membership("a", "b", "c")
    picker = RoundRobin().build(members)
    a = members.by_id["a"]
    picker.seed({"a": 5})
    picker.acquired(a)
    picker.released(a, False, 1.0)
    assert [picker.pick().id for _ in range(4)] == ["a", "b", "c", "a"]


def test_pick_excluding_skips_excluded_and_keeps_the_rotation() -> None:
    picker = RoundRobin().build(membership("a", "b", "c", "d"))
    assert picker.pick().id == "a"
    found = picker.pick_excluding({"b", "c"})
    assert found is not None and found.id == "d"
    assert picker.pick().id == "a"


def test_pick_excluding_nothing_is_a_plain_pick() -> None:
    picker = RoundRobin().build(membership("a", "b"))
    picks = [picker.pick_excluding([]), picker.pick_excluding(()), picker.pick()]
    assert [p.id if p else None for p in picks] == ["a", "b", "a"]


def test_pick_excluding_everything_is_none() -> None:
    picker = RoundRobin().build(membership("a", "b"))
    assert picker.pick_excluding({"a", "b", "zzz"}) is None


def test_empty_membership_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        RoundRobinPicker(Membership(service="svc"))
