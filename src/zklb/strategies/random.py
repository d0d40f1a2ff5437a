"""Random strategies: uniform random choice, and "power of two choices" on in-flight load.

Both take the random source as a setting (``rng``, a `random.Random`) so tests can make them exact.
``Random.random`` is a C call, so sharing one generator between threads is safe under the GIL.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from typing import ClassVar

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies._counts import InFlightCounts
from zklb.strategies.base import Picker

__all__ = ["PowerOfTwoChoices", "PowerOfTwoChoicesPicker", "RandomChoice", "RandomPicker"]


class RandomChoice:
    """Every pick is an independent uniform choice among the instances (weights are ignored).

    Cost: O(1) to build (O(n) memory shared with the snapshot), O(1) per pick.
    """

    name: ClassVar[str] = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def build(self, membership: Membership) -> Picker:
        """A `RandomPicker` over ``membership`` drawing from this strategy's ``rng``."""
        return RandomPicker(membership, self.rng)

    def __repr__(self) -> str:
        return "RandomChoice()"


class RandomPicker:
    """Uniform random picks; ``seed``/``acquired``/``released`` are no-ops."""

    tracks_load: bool = False

    __slots__ = ("_instances", "_random", "_rng", "_size")

    def __init__(self, membership: Membership, rng: random.Random) -> None:
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot balance over the empty membership of {membership.service!r}")
        self._instances = instances
        self._size = float(len(instances))
        self._rng = rng
        self._random: Callable[[], float] = rng.random

    def pick(self) -> ServiceInstance:
        """A uniformly random instance. O(1), lock-free.

        ``int(random() * n)`` is uniform up to a bias below ``n / 2**53``, far under any measurable skew.
        """
        return self._instances[int(self._random() * self._size)]

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """A uniformly random instance whose id is not in ``exclude``, or None. O(n)."""
        if not exclude:
            return self.pick()
        rest = [inst for inst in self._instances if inst.id not in exclude]
        return self._rng.choice(rest) if rest else None

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Ignored: random choice does not look at load."""

    def acquired(self, instance: ServiceInstance) -> None:
        """Ignored: random choice does not look at load."""

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """Ignored: random choice does not look at load."""


class PowerOfTwoChoices:
    """Draw two instances at random and take the less loaded (in flight / weight; ties: the first drawn).

    Nearly as even as least connections without keeping anything sorted. Cost: O(n) to build or seed,
    O(1) per pick and per ``acquired``/``released``.
    """

    name: ClassVar[str] = "power_of_two_choices"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def build(self, membership: Membership) -> Picker:
        """A `PowerOfTwoChoicesPicker` over ``membership`` with every instance idle (until ``seed``)."""
        return PowerOfTwoChoicesPicker(membership, self.rng)

    def __repr__(self) -> str:
        return "PowerOfTwoChoices()"


class PowerOfTwoChoicesPicker(InFlightCounts):
    """Two random candidates, the less loaded wins; loads compared exactly by cross-multiplying.

    Threading: ``pick`` reads two counts from a list the mutators update in place; a count one update
    stale only changes which of two valid candidates wins.
    """

    tracks_load: bool = True

    __slots__ = ("_random", "_rng", "_size", "_weights")

    def __init__(self, membership: Membership, rng: random.Random) -> None:
        instances = self._track(membership)
        self._weights = [inst.weight for inst in instances]
        self._size = float(len(instances))
        self._rng = rng
        self._random: Callable[[], float] = rng.random

    def pick(self) -> ServiceInstance:
        """The less loaded of two random instances. O(1), lock-free."""
        size = self._size
        a = int(self._random() * size)
        b = int(self._random() * size)
        in_flight = self._in_flight
        weights = self._weights
        # in_flight[b] / w[b] < in_flight[a] / w[a], without division.
        if in_flight[b] * weights[a] < in_flight[a] * weights[b]:
            a = b
        return self._instances[a]

    def _best_of(self, rest: list[int]) -> int:
        """Power of two choices among the indices ``rest`` (for ``pick_excluding``)."""
        a = self._rng.choice(rest)
        b = self._rng.choice(rest)
        if self._in_flight[b] * self._weights[a] < self._in_flight[a] * self._weights[b]:
            a = b
        return a
