"""`InFlightCounts`: the in-flight bookkeeping shared by the pickers that sample a few instances."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["InFlightCounts"]


class InFlightCounts:
    """A base for pickers that keep one in-flight count per instance in a list, by snapshot index.

    The picker sets ``_index`` (id -> index) and ``_in_flight`` (a list of zeros) in ``__init__``;
    lock-free picks read ``_in_flight`` while these methods (serialised by the balancer) update it in
    place, or, in ``seed``, replace it in one assignment.
    """

    __slots__ = ("_in_flight", "_index", "_instances")

    tracks_load: bool = True
    _instances: tuple[ServiceInstance, ...]
    _index: dict[str, int]
    _in_flight: list[int]

    def _track(self, membership: Membership) -> tuple[ServiceInstance, ...]:
        """Set up the counts (all zero) for ``membership``'s instances, which it returns; never empty."""
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot balance over the empty membership of {membership.service!r}")
        self._instances = instances
        self._index = {inst.id: i for i, inst in enumerate(instances)}
        self._in_flight = [0] * len(instances)
        return instances

    def pick(self) -> ServiceInstance:
        """The picker's pick (defined by each picker)."""
        raise NotImplementedError

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """A pick among the instances whose id is not in ``exclude`` (the picker's `_best_of`), or None.

        O(n): retries and skips past ejected instances are rare next to picks.
        """
        if not exclude:
            return self.pick()
        rest = [i for i, inst in enumerate(self._instances) if inst.id not in exclude]
        if not rest:
            return None
        return self._instances[self._best_of(rest)]

    def _best_of(self, rest: list[int]) -> int:
        """The index the picker's rule takes among the (non-empty) indices ``rest``."""
        raise NotImplementedError

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Replace all in-flight counts (unknown ids ignored, absent ids count 0). O(n)."""
        counts = [0] * len(self._in_flight)
        for instance_id, value in in_flight.items():
            i = self._index.get(instance_id)
            if i is not None:
                counts[i] = max(0, int(value))
        self._in_flight = counts

    def acquired(self, instance: ServiceInstance) -> None:
        """One more request in flight to ``instance`` (ignored if not in the snapshot). O(1)."""
        i = self._index.get(instance.id)
        if i is not None:
            self._in_flight[i] += 1

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """One request to ``instance`` ended; the count never goes below 0. O(1)."""
        self._count_down(instance)

    def _count_down(self, instance: ServiceInstance) -> int | None:
        """Take one from ``instance``'s count (not below 0); its index, or None if not in the snapshot."""
        i = self._index.get(instance.id)
        if i is not None and self._in_flight[i] > 0:
            self._in_flight[i] -= 1
        return i
