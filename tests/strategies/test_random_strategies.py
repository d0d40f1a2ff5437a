"""Uniform random and power-of-two-choices, made exact with an injected random source."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

import pytest

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import Picker
from zklb.strategies.random import PowerOfTwoChoices, PowerOfTwoChoicesPicker, RandomChoice

OK = (True, 0.01)  # success, latency


class Scripted(random.Random):
    """A random source that returns the given floats, in order."""

    def __init__(self, values: Iterable[float]) -> None:
        super().__init__(0)
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


def membership(weights: dict[str, int]) -> Membership:
    return Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=i, host="127.0.0.1", port=8000 + k, weight=w)
            for k, (i, w) in enumerate(weights.items())
        ),
    )


def test_random_maps_the_unit_interval_onto_the_instances_in_order() -> None:
    picker = RandomChoice(Scripted([0.0, 0.34, 0.99, 0.5])).build(membership({"c": 1, "b": 1, "a": 1}))
    assert isinstance(picker, Picker)
    assert [picker.pick().id for _ in range(4)] == ["a", "b", "c", "b"]


def test_random_is_roughly_uniform_and_repeatable_with_a_seed() -> None:
    members = membership({f"i{k}": 1 for k in range(5)})
    first = RandomChoice(random.Random(42)).build(members)
    second = RandomChoice(random.Random(42)).build(members)
    picks = [first.pick().id for _ in range(5000)]
    assert picks == [second.pick().id for _ in range(5000)]
    assert all(800 < count < 1200 for count in Counter(picks).values())


def test_random_pick_excluding() -> None:
    picker = RandomChoice(random.Random(1)).build(membership({"a": 1, "b": 1, "c": 1}))
    assert {p.id for _ in range(50) if (p := picker.pick_excluding({"a"})) is not None} == {"b", "c"}
    assert picker.pick_excluding({"a", "b", "c"}) is None


def test_power_of_two_takes_the_less_loaded_of_the_two_draws() -> None:
    members = membership({"a": 1, "b": 1, "c": 1})
    # Draws: (a, c), (c, a), (b, b).
    picker = PowerOfTwoChoices(Scripted([0.1, 0.9, 0.9, 0.1, 0.5, 0.5])).build(members)
    assert isinstance(picker, PowerOfTwoChoicesPicker)
    picker.seed({"a": 3, "b": 9})
    assert [picker.pick().id for _ in range(3)] == ["c", "c", "b"]


def test_power_of_two_load_is_relative_to_weight_and_ties_keep_the_first_draw() -> None:
    members = membership({"a": 4, "b": 1})
    picker = PowerOfTwoChoices(Scripted([0.1, 0.9, 0.9, 0.1])).build(members)
    picker.seed({"a": 2, "b": 1})  # 2/4 < 1/1: a wins either way round
    assert [picker.pick().id for _ in range(2)] == ["a", "a"]
    tie = PowerOfTwoChoices(Scripted([0.1, 0.9, 0.9, 0.1])).build(members)
    tie.seed({"a": 4, "b": 1})  # 4/4 == 1/1
    assert [tie.pick().id for _ in range(2)] == ["a", "b"]


def test_power_of_two_tracks_acquired_and_released() -> None:
    members = membership({"a": 1, "b": 1})
    picker = PowerOfTwoChoices(Scripted([0.1, 0.9] * 3)).build(members)
    a = members.by_id["a"]
    picker.acquired(a)
    assert picker.pick().id == "b"
    picker.released(a, *OK)
    picker.released(a, *OK)  # not below zero
    assert picker.pick().id == "a"
    picker.acquired(ServiceInstance(id="stranger", host="127.0.0.1", port=1))  # ignored
    assert picker.pick().id == "a"


def test_power_of_two_pick_excluding() -> None:
    picker = PowerOfTwoChoices(random.Random(3)).build(membership({"a": 1, "b": 1, "c": 1}))
    picker.seed({"b": 5})
    assert {p.id for _ in range(50) if (p := picker.pick_excluding({"a"})) is not None} == {"b", "c"}
    assert picker.pick_excluding({"a", "b", "c"}) is None


@pytest.mark.parametrize("strategy", [RandomChoice(), PowerOfTwoChoices()])
def test_empty_membership_is_refused(strategy: RandomChoice | PowerOfTwoChoices) -> None:
    with pytest.raises(ValueError, match="empty"):
        strategy.build(Membership(service="svc"))
