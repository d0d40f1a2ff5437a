"""The `Strategy` protocol: how a load-balancing policy plugs into `LoadBalancer`.

A strategy is a small, stateless factory. For each `Membership` snapshot it builds a `Picker`: the
state that answers "which instance next?" for exactly that snapshot. The balancer builds the new picker
off to the side when membership changes and swaps one reference, so pickers never see a membership
change in place.

Threading rules every picker follows (the balancer relies on them):

- ``pick()`` and ``pick_excluding()`` run concurrently from many threads with **no lock** held: they do
  no I/O, never block, never raise because of a concurrent update, and only ever return members of the
  snapshot they were built from.
- ``seed()``, ``acquired()``, ``released()`` are serialised by the balancer (one thread at a time owns
  the counts, for a few hundred nanoseconds), but may run at the same time as ``pick()`` calls in
  other threads.
- No kazoo, no httpx, no clocks: everything a picker needs arrives through these methods.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import ClassVar, Protocol, runtime_checkable

from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["Picker", "Strategy"]


@runtime_checkable
class Picker(Protocol):
    """Strategy state for one membership snapshot (never empty: the balancer handles empty pools).

    ``tracks_load`` False lets the balancer skip ``acquired()``/``released()`` calls on every request.
    A picker that tracks load may also offer ``acquire_pick() -> ServiceInstance``: ``pick()`` and
    ``acquired()`` in one call, which the balancer then uses in ``acquire()`` (as the owner of the
    counts). One that does not may offer ``ramped_pick(factors: Mapping[str, float]) -> Callable[[],
    ServiceInstance]``: a pick function over the same instances with each weight times its factor (id
    -> factor in (0, 1], 1 if absent), which slow start then builds once per step and uses instead of
    thinning the picks.
    """

    tracks_load: bool

    def pick(self) -> ServiceInstance:
        """The next instance. Lock-free, no I/O; see the module docstring for the threading rules."""
        ...

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """The next instance whose id is not in ``exclude`` (used by retries), or None if none is left."""
        ...

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Load in-flight counts (instance id -> count) before this picker is swapped in."""
        ...

    def acquired(self, instance: ServiceInstance) -> None:
        """A request to ``instance`` started (its in-flight count went up by one)."""
        ...

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """A request to ``instance`` ended with ``outcome`` (its in-flight count went down by one)."""
        ...


class Strategy(Protocol):
    """A load-balancing policy: builds a `Picker` for each membership snapshot.

    ``name`` is what users pass to ``set_strategy()``. Settings go in ``__init__``; ``build`` must be
    pure (it runs on the watcher's thread, never on the caller's hot path).
    """

    name: ClassVar[str]

    def build(self, membership: Membership) -> Picker:
        """Build picking state for a non-empty ``membership``."""
        ...
