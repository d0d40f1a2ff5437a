"""Round robin: every instance once per cycle, in the snapshot's stable order (sorted by id)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from itertools import cycle
from typing import ClassVar

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies.base import Picker

__all__ = ["RoundRobin", "RoundRobinPicker"]


class RoundRobin:
    """Plain round robin, ignoring weights and load.

    Cost: O(1) to build (the cycle copies the instances lazily, O(n) memory), O(1) per pick.
    """

    name: ClassVar[str] = "round_robin"

    def build(self, membership: Membership) -> Picker:
        """A `RoundRobinPicker` that starts at the first instance of ``membership``."""
        return RoundRobinPicker(membership)

    def __repr__(self) -> str:
        return "RoundRobin()"


class RoundRobinPicker:
    """Hands out ``membership.instances`` in order, wrapping around: each once per cycle.

    ``pick`` is the C-level ``__next__`` of an `itertools.cycle`, bound once: a pick runs no Python
    bytecode and allocates nothing, so under the GIL it is atomic and concurrent picks never skip or
    repeat a turn. ``seed``/``acquired``/``released`` are no-ops.
    """

    tracks_load: bool = False

    __slots__ = ("_instances", "pick")

    #: The next instance in turn. O(1), lock-free; an attribute rather than a method so it is a C call.
    pick: Callable[[], ServiceInstance]

    def __init__(self, membership: Membership) -> None:
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot round-robin over the empty membership of {membership.service!r}")
        self._instances = instances
        self.pick = cycle(instances).__next__

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """The next instance in turn whose id is not in ``exclude``, or None if every one is excluded.

        Takes turns from the shared rotation (a retry is a real request, so it uses up a turn):
        ``len(exclude) + 1`` consecutive turns cover that many distinct instances, so one of them is
        free unless another thread took turns in between; then it scans. O(len(exclude)), at worst O(n).
        """
        if not exclude:
            return self.pick()
        instances = self._instances
        for _ in range(min(len(instances), len(exclude) + 1)):
            instance = self.pick()
            if instance.id not in exclude:
                return instance
        return next((inst for inst in instances if inst.id not in exclude), None)

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Ignored: round robin does not look at load."""

    def acquired(self, instance: ServiceInstance) -> None:
        """Ignored: round robin does not look at load."""

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """Ignored: round robin does not look at load."""
