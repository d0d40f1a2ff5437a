"""Load-balancing strategies and the registry that maps names to them.

Built in: ``"round_robin"``, ``"weighted_round_robin"``, ``"least_connections"``, ``"random"``,
``"power_of_two_choices"``, ``"weighted_random"``, ``"least_request"``, ``"consistent_hash"``,
``"peak_ewma"`` (docs/strategies.md compares them). More can be added with `register_strategy`, or
published by another distribution under the entry-point group ``"zklb.strategies"`` (each entry point
names a zero-argument callable, usually the class, that returns a `Strategy`); those are discovered the
first time a name is not found, and imported only when asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from zklb.errors import UnknownStrategy
from zklb.strategies.base import Picker, Strategy
from zklb.strategies.consistent_hash import ConsistentHash, HashKey
from zklb.strategies.least_connections import LeastConnections
from zklb.strategies.least_request import LeastRequest
from zklb.strategies.peak_ewma import PeakEwma
from zklb.strategies.random import PowerOfTwoChoices, RandomChoice
from zklb.strategies.round_robin import RoundRobin
from zklb.strategies.weighted import WeightedRoundRobin
from zklb.strategies.weighted_random import WeightedRandom

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConsistentHash",
    "HashKey",
    "LeastConnections",
    "LeastRequest",
    "PeakEwma",
    "Picker",
    "PowerOfTwoChoices",
    "RandomChoice",
    "RoundRobin",
    "Strategy",
    "WeightedRandom",
    "WeightedRoundRobin",
    "create_strategy",
    "register_strategy",
    "strategy_names",
]

#: Entry-point group under which other distributions publish strategies.
ENTRY_POINT_GROUP = "zklb.strategies"

StrategyFactory = Callable[[], Strategy]

_lock = threading.Lock()
_factories: dict[str, StrategyFactory] = {}
_entry_points_loaded = False


def _new_lock_in_child() -> None:
    # A fork copies the lock as it was: held by a thread that does not exist in the child, it would
    # stay held for ever. The names dict is only ever replaced whole-entry under it, so it is intact.
    global _lock  # noqa: PLW0603 - the module's one lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def register_strategy(name: str, factory: StrategyFactory, *, replace: bool = False) -> None:
    """Make ``create_strategy(name)`` return ``factory()``.

    ``factory`` is a zero-argument callable returning a `Strategy` (a strategy class works). Registering
    a taken name raises `ValueError` unless ``replace=True``, so a plugin cannot silently shadow another.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"strategy factory for {name!r} must be callable, got {factory!r}")
    with _lock:
        if not replace and name in _factories and _factories[name] is not factory:
            raise ValueError(f"strategy {name!r} is already registered (pass replace=True to override)")
        _factories[name] = factory


def create_strategy(name_or_strategy: str | Strategy) -> Strategy:
    """The strategy registered under a name, or a given strategy object unchanged.

    Raises `UnknownStrategy` (listing the valid names) for a name nothing is registered under, and
    `TypeError` for anything that is neither a string nor a strategy instance.
    """
    if isinstance(name_or_strategy, str):
        factory = _factories.get(name_or_strategy)
        if factory is None:
            _load_entry_points()
            factory = _factories.get(name_or_strategy)
        if factory is None:
            raise UnknownStrategy(name_or_strategy, strategy_names())
        strategy = factory()
        if not _is_strategy(strategy):
            raise TypeError(
                f"the factory registered as {name_or_strategy!r} returned {strategy!r}, not a strategy"
            )
        return strategy
    if isinstance(name_or_strategy, type):
        raise TypeError(
            f"expected a strategy name or instance, got the class {name_or_strategy.__name__}; "
            f"pass {name_or_strategy.__name__}() instead"
        )
    if _is_strategy(name_or_strategy):
        return name_or_strategy
    raise TypeError(
        "expected a strategy name (str) or a strategy (an object with `name` and `build`), "
        f"got {type(name_or_strategy).__name__} {name_or_strategy!r}"
    )


def strategy_names() -> tuple[str, ...]:
    """Every name `create_strategy` accepts, sorted (entry-point names included, not yet imported)."""
    _load_entry_points()
    return tuple(sorted(_factories))


def _is_strategy(obj: object) -> bool:
    return (
        not isinstance(obj, type)
        and isinstance(getattr(obj, "name", None), str)
        and callable(getattr(obj, "build", None))
    )


def _load_entry_points() -> None:
    """Register a lazy factory for each published entry point, once; explicit registrations win."""
    global _entry_points_loaded  # noqa: PLW0603 - one process-wide registry
    if _entry_points_loaded:
        return
    found = entry_points(group=ENTRY_POINT_GROUP)
    with _lock:
        if _entry_points_loaded:
            return
        for entry_point in found:
            _factories.setdefault(entry_point.name, _entry_point_factory(entry_point))
        _entry_points_loaded = True


def _entry_point_factory(entry_point: EntryPoint) -> StrategyFactory:
    def factory() -> Strategy:
        # Imported on first use only, so a broken plugin cannot break the names that work.
        target: Callable[[], Strategy] = entry_point.load()
        return target()

    return factory


for _strategy in (
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    RandomChoice,
    PowerOfTwoChoices,
    WeightedRandom,
    LeastRequest,
    ConsistentHash,
    PeakEwma,
):
    register_strategy(_strategy.name, _strategy)
del _strategy
