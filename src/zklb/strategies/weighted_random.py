"""Weighted random: each pick independent, in proportion to weight, by Walker's alias method.

The alias table splits the unit interval into ``n`` equal columns; column ``i`` belongs to instance
``i`` up to ``cut[i]`` and to ``alias[i]`` above it. One uniform draw picks a column and a height in it:
two list reads and a comparison, whatever the weights. Built with Vose's stable variant in O(n) time and
memory: 10,000 instances with weights up to 10,000 need two lists of 10,000 entries, nothing in
proportion to the weights' sum.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import accumulate
from typing import ClassVar

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies.base import Picker

__all__ = ["WeightedRandom", "WeightedRandomPicker", "alias_table", "weighted_choice"]


class WeightedRandom:
    """Independent random picks in proportion to weight (alias method).

    Cost: O(n) to build (two lists of n entries), O(1) per pick (one random draw, two list reads).
    Keeps no state between picks and does not look at load. ``rng`` makes it exact in tests.
    """

    name: ClassVar[str] = "weighted_random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def build(self, membership: Membership) -> Picker:
        """A `WeightedRandomPicker` over ``membership``."""
        return WeightedRandomPicker(membership, self.rng)

    def __repr__(self) -> str:
        return "WeightedRandom()"


class WeightedRandomPicker:
    """Alias-method picks over one snapshot; ``seed``/``acquired``/``released`` are no-ops.

    Threading: the tables never change after ``__init__``; ``Random.random`` is one C call.
    """

    tracks_load: bool = False

    __slots__ = ("_alias", "_cut", "_instances", "_membership", "_random", "_rng", "_size", "_weights")

    def __init__(
        self, membership: Membership, rng: random.Random, weights: Sequence[float] | None = None
    ) -> None:
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot balance over the empty membership of {membership.service!r}")
        self._membership = membership
        self._instances = instances
        # ``weights``: in place of the instances' own (slow start's ramped weights).
        self._weights: Sequence[float] = [inst.weight for inst in instances] if weights is None else weights
        cut, alias = alias_table(self._weights)
        # Column i's owner below the cut, its alias above: instances stored, not indices (one read less).
        self._cut = cut
        self._alias = [instances[a] for a in alias]
        self._size = float(len(instances))
        self._rng = rng
        self._random: Callable[[], float] = rng.random

    def pick(self) -> ServiceInstance:
        """A random instance, in proportion to weight. O(1), lock-free."""
        u = self._random() * self._size
        i = int(u)
        # The fraction of the draw above the column's floor is the height within column i.
        if u - i < self._cut[i]:
            return self._instances[i]
        return self._alias[i]

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """A random instance not in ``exclude``, in proportion to weight among the rest, or None.

        A few ordinary picks first (O(1) each), then O(n) over the remaining instances.
        """
        if not exclude:
            return self.pick()
        for _ in range(4):
            instance = self.pick()
            if instance.id not in exclude:
                return instance
        return weighted_choice(self._instances, self._weights, exclude, self._random)

    def ramped_pick(self, factors: Mapping[str, float]) -> Callable[[], ServiceInstance]:
        """For slow start: the pick of an alias table over each weight times ``factors[id]`` (1 if
        absent). O(n) to build; the pool builds one per step of the ramp, off its lock."""
        weights = [
            w * factors.get(inst.id, 1.0) for inst, w in zip(self._instances, self._weights, strict=True)
        ]
        return WeightedRandomPicker(self._membership, self._rng, weights).pick

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Ignored: weighted random does not look at load."""

    def acquired(self, instance: ServiceInstance) -> None:
        """Ignored: weighted random does not look at load."""

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """Ignored: weighted random does not look at load."""


def alias_table(weights: Sequence[int | float]) -> tuple[list[float], list[int]]:
    """Vose's alias table for ``weights`` (all positive): ``(cut, alias)``, each of length n.

    Column ``i`` of the unit-width columns gives index ``i`` with probability ``cut[i]`` and
    ``alias[i]`` otherwise, so index ``k`` comes out with probability ``weights[k] / sum(weights)``.
    """
    n = len(weights)
    total = float(sum(weights))
    scaled = [w * n / total for w in weights]
    cut = [1.0] * n
    alias = list(range(n))
    small = [i for i, s in enumerate(scaled) if s < 1.0]
    large = [i for i, s in enumerate(scaled) if s >= 1.0]
    while small and large:
        low = small.pop()
        high = large.pop()
        cut[low] = scaled[low]
        alias[low] = high
        # The large one gives the rest of column `low` away; what it keeps may fall below one column.
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    # Whatever is left is a full column up to rounding: it keeps its own (cut 1.0, alias itself).
    return cut, alias


def weighted_choice(
    instances: Sequence[ServiceInstance],
    weights: Sequence[float],
    exclude: Collection[str],
    draw: Callable[[], float],
) -> ServiceInstance | None:
    """One of ``instances`` not in ``exclude``, in proportion to its weight; None if none is left. O(n)."""
    rest = [(inst, w) for inst, w in zip(instances, weights, strict=True) if inst.id not in exclude]
    if not rest:
        return None
    ends = list(accumulate(w for _, w in rest))
    target = draw() * ends[-1]
    for (inst, _), end in zip(rest, ends, strict=True):
        if target < end:
            return inst
    return rest[-1][0]  # draw() * total rounded up to total
