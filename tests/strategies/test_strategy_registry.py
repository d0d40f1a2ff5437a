"""The strategy registry: names, errors that list the valid names, registration, entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from zklb import strategies
from zklb.errors import UnknownStrategy, ZklbError
from zklb.strategies import (
    LeastConnections,
    RoundRobin,
    Strategy,
    WeightedRoundRobin,
    create_strategy,
    register_strategy,
    strategy_names,
)

BUILT_IN = (
    "consistent_hash",
    "least_connections",
    "least_request",
    "peak_ewma",
    "power_of_two_choices",
    "random",
    "round_robin",
    "weighted_random",
    "weighted_round_robin",
)


@pytest.fixture(autouse=True)
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own copy of the registry and sees no installed entry points."""
    monkeypatch.setattr(strategies, "_factories", dict(strategies._factories))
    monkeypatch.setattr(strategies, "_entry_points_loaded", False)
    monkeypatch.setattr(strategies, "entry_points", lambda group: ())


def test_built_in_names() -> None:
    assert strategy_names() == BUILT_IN


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("weighted_round_robin", WeightedRoundRobin),
        ("least_connections", LeastConnections),
    ],
)
def test_create_by_name(name: str, cls: type[Strategy]) -> None:
    strategy = create_strategy(name)
    assert type(strategy) is cls
    assert strategy.name == name


def test_every_built_in_name_round_trips() -> None:
    for name in BUILT_IN:
        assert create_strategy(name).name == name


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownStrategy) as caught:
        create_strategy("fastest")
    assert isinstance(caught.value, ZklbError)
    assert caught.value.name == "fastest"
    assert caught.value.known == BUILT_IN
    for name in BUILT_IN:
        assert name in str(caught.value)


def test_a_strategy_instance_passes_through() -> None:
    strategy = WeightedRoundRobin(schedule_limit=10)
    assert create_strategy(strategy) is strategy


def test_a_class_or_other_object_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"RoundRobin\(\)"):
        create_strategy(RoundRobin)  # type: ignore[arg-type]
    bad: Any = 42
    with pytest.raises(TypeError, match="strategy name"):
        create_strategy(bad)


def test_register_and_create() -> None:
    register_strategy("mine", lambda: WeightedRoundRobin(schedule_limit=5))
    assert "mine" in strategy_names()
    made = create_strategy("mine")
    assert isinstance(made, WeightedRoundRobin) and made.schedule_limit == 5


def test_registering_a_taken_name_needs_replace() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("round_robin", LeastConnections)
    register_strategy("round_robin", LeastConnections, replace=True)
    assert isinstance(create_strategy("round_robin"), LeastConnections)


def test_registering_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        register_strategy("", RoundRobin)
    bad: Any = "not callable"
    with pytest.raises(TypeError, match="callable"):
        register_strategy("x", bad)


def test_a_factory_that_returns_no_strategy_is_reported() -> None:
    def not_a_strategy() -> object:
        return object()

    bad: Any = not_a_strategy
    register_strategy("broken", bad)
    with pytest.raises(TypeError, match="broken"):
        create_strategy("broken")


def test_entry_points_are_found_lazily_and_explicit_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    group = strategies.ENTRY_POINT_GROUP
    published = (
        EntryPoint(name="plugin_rr", value="zklb.strategies.round_robin:RoundRobin", group=group),
        EntryPoint(name="round_robin", value="zklb.strategies.random:RandomChoice", group=group),
        EntryPoint(name="plugin_broken", value="zklb_no_such_module:Thing", group=group),
    )
    asked: list[str] = []

    def fake_entry_points(group: str) -> tuple[EntryPoint, ...]:
        asked.append(group)
        return published

    monkeypatch.setattr(strategies, "entry_points", fake_entry_points)
    assert isinstance(create_strategy("round_robin"), RoundRobin)  # known name: no discovery
    assert asked == []
    assert isinstance(create_strategy("plugin_rr"), RoundRobin)
    assert asked == [group]
    assert isinstance(create_strategy("round_robin"), RoundRobin)  # a plugin cannot shadow it
    assert "plugin_broken" in strategy_names()  # listed without importing it
    with pytest.raises(ModuleNotFoundError):
        create_strategy("plugin_broken")
    with pytest.raises(UnknownStrategy, match="plugin_rr"):
        create_strategy("still_unknown")
    assert asked == [group]  # discovered once
