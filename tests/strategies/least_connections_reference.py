"""Least connections the obvious way, to check the fast picker (``zklb.strategies.least_connections``).

A count per instance, loads compared as exact fractions, an O(n) scan per pick: slow, and correct
at a glance. The fast picker must agree with it on every count, and pick only among the instances
it calls least loaded (which of those comes first is the fast picker's business).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from fractions import Fraction
from typing import ClassVar

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import Picker


class ReferenceLeastConnectionsPicker:
    """`Picker` for one snapshot: in-flight count per id; pick = least ``count / weight``, in turn."""

    tracks_load = True

    def __init__(self, membership: Membership) -> None:
        self.instances = membership.instances
        self.counts = dict.fromkeys(membership.by_id, 0)
        self.turn = 0

    def load(self, instance: ServiceInstance) -> Fraction:
        return Fraction(self.counts[instance.id], instance.weight)

    def least(self, exclude: Collection[str] = ()) -> list[ServiceInstance]:
        """Every least-loaded instance not in ``exclude``, in id order."""
        candidates = [inst for inst in self.instances if inst.id not in exclude]
        if not candidates:
            return []
        lowest = min(self.load(inst) for inst in candidates)
        return [inst for inst in candidates if self.load(inst) == lowest]

    def least_ids(self, exclude: Collection[str] = ()) -> set[str]:
        return {inst.id for inst in self.least(exclude)}

    def pick(self) -> ServiceInstance:
        least = self.least()
        self.turn += 1
        return least[self.turn % len(least)]

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        least = self.least(exclude)
        return least[0] if least else None

    def seed(self, in_flight: Mapping[str, int]) -> None:
        self.counts = {key: max(0, int(in_flight.get(key, 0))) for key in self.counts}

    def acquired(self, instance: ServiceInstance) -> None:
        if instance.id in self.counts:
            self.counts[instance.id] += 1

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        if self.counts.get(instance.id, 0) > 0:
            self.counts[instance.id] -= 1

    def in_flight(self, instance_id: str) -> int:
        return self.counts.get(instance_id, 0)


class ReferenceLeastConnections:
    """The `Strategy` that builds `ReferenceLeastConnectionsPicker`s."""

    name: ClassVar[str] = "reference_least_connections"

    def build(self, membership: Membership) -> Picker:
        return ReferenceLeastConnectionsPicker(membership)
