"""Least connections: the instance with the fewest in-flight requests per unit of weight.

Load is ``in_flight / weight``, compared exactly, with integers only. Normally an instance's load is
``in_flight * (L // weight)`` with ``L`` the least common multiple of the weights (``L = 1`` when all
weights are equal): equal fractions give equal loads, and a request more or less adds or subtracts a
constant. When ``L`` would exceed 2**1024 (hundreds of distinct large weights), a variant keeps the
counts and uses ``in_flight * S // weight`` with ``S = max_weight**2``: two different fractions with
denominators at most ``max_weight`` differ by at least ``1 / max_weight**2``, so after scaling by
``S`` their floors keep their order, and equal fractions still give equal integers. No floats.

The instances are kept by load in a `LevelStructure` (``zklb.strategies._levels``, where its layout
and the costs of its slow paths are described): the least loaded form a *ring* that
``acquire_pick()`` takes from at a cursor, and ``pick()`` rotates over without a lock. A short,
obviously correct version of the same policy is in ``tests/strategies/least_connections_reference.py``;
the tests check this one against it.

Measured with CPython 3.11 (``benchmarks/bench_strategies.py``: 1,000 and 10,000 instances, weights
1..10, a bare Python method call taking about 70 ns): ``acquire_pick()`` + ``released()`` cost about
3 bare calls when released at once, 3-4 with 50 requests held at random, and 11-15 when every instance
is busy (the lowest load changes on most calls). ``pick()`` + ``acquired()`` + ``released()`` cost
about 9-12 bare calls, 13-17 when every instance is busy; ``pick()`` alone about 1.5-1.8 (through a
bound method, as ``LoadBalancer.get_server`` calls it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import chain, count
from math import lcm
from typing import ClassVar

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies._levels import LevelStructure
from zklb.strategies.base import Picker

__all__ = ["LeastConnections", "LeastConnectionsPicker"]

# Largest common multiple of the weights for which loads are kept as ``in_flight * (L // weight)``.
# Adding such integers stays cheaper than the counts-based variant's multiplication and division up
# to about 2000 bits (measured); weights 1..900, say, stay under 2**1024.
_MAX_MULTIPLE = 2**1024


class LeastConnections:
    """Least in-flight requests relative to weight; equally loaded instances take turns.

    Cost: O(n) to build or seed, O(1) per pick, O(1) amortised per ``acquire_pick``/``acquired``/
    ``released`` (plus O(log L) for L distinct loads when the lowest load changes).
    """

    name: ClassVar[str] = "least_connections"

    def build(self, membership: Membership) -> Picker:
        """A `LeastConnectionsPicker` for ``membership`` with every instance idle (until ``seed``)."""
        return LeastConnectionsPicker(membership)

    def __repr__(self) -> str:
        return "LeastConnections()"


class LeastConnectionsPicker(LevelStructure):
    """Least-loaded picking for one snapshot, over a `LevelStructure` (``zklb.strategies._levels``).

    ``acquire_pick()`` is the fused "pick and count one more request" that the balancer calls instead
    of ``pick()`` + ``acquired()`` (one thread at a time: the owner of the counts, see ``zklb._pool``);
    ``acquired()`` stays for other callers. On its request path the balancer runs the fast paths of
    ``acquire_pick()`` and ``released()`` written out (``Pool.acquire``, ``CountedLease.__exit__``):
    a change to either is made there too (the tests drive both against the reference).
    ``LeastConnectionsPicker(membership)`` gives the counts-based variant when the weights' common
    multiple exceeds 2**1024 (see the module docstring).

    Threading: ``pick`` holds no lock. It reads the ring, then the cursor, and indexes the ring with a
    value from an `itertools.count`. The mutators (serialised by the balancer) change the ring in
    place or swap it, so a racing pick may get an instance that is just leaving the lowest load (an
    answer one update stale), or indices that no longer fit, which it catches and retries; it never
    raises and only returns snapshot members (every ring entry is an index into the snapshot).
    """

    tracks_load: bool = True

    __slots__ = ("_index", "_instances", "_turns")

    def __new__(cls, membership: Membership) -> LeastConnectionsPicker:
        if cls is LeastConnectionsPicker and _common_multiple(membership) > _MAX_MULTIPLE:
            return object.__new__(_ScaledLeastConnectionsPicker)
        return object.__new__(cls)

    def __init__(self, membership: Membership) -> None:
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot balance over the empty membership of {membership.service!r}")
        self._instances = instances
        self._index = {inst.id: i for i, inst in enumerate(instances)}
        self._n = len(instances)
        self._setup_weights([inst.weight for inst in instances])
        # Cut the consumed part off the ring after this many picks: O(n) work every >= 4n picks.
        self._limit = 4 * len(instances) + 256
        self._turns = count()
        self._reset([0] * len(instances))

    def _setup_weights(self, weights: list[int]) -> None:
        distinct = set(weights)
        multiple = lcm(*distinct)
        # One int object per distinct weight, shared by the lists: fewer cache misses on big pools.
        step = {w: multiple // w for w in distinct}
        step2 = {w: 2 * s for w, s in step.items()}
        up = {w: 2 * s + 1 for w, s in step.items()}
        self._step = [step[w] for w in weights]
        self._step2 = [step2[w] for w in weights]
        self._up = [up[w] for w in weights]

    # -- picking (lock-free) -------------------------------------------------------------------------

    def pick(self) -> ServiceInstance:
        """An instance of the lowest load, taking turns among them. O(1), lock-free."""
        ring = self._ring
        pos = self._pos
        try:
            return self._instances[ring[pos + next(self._turns) % (len(ring) - pos)]]
        except (IndexError, ZeroDivisionError):
            # The ring changed between reading it and the cursor (a concurrent update).
            return self._pick_after_race()

    def _pick_after_race(self) -> ServiceInstance:
        instances = self._instances
        for _ in range(3):
            ring = self._ring
            pos = self._pos
            try:
                return instances[ring[pos + next(self._turns) % (len(ring) - pos)]]
            except (IndexError, ZeroDivisionError):
                continue
        # Still racing: any member will do for this one pick.
        return instances[next(self._turns) % len(instances)]

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """The least loaded instance whose id is not in ``exclude``, or None. O(n).

        The scan starts at a rotating offset so that equally loaded candidates take turns.
        """
        if not exclude:
            return self.pick()
        instances = self._instances
        keys = self._keys
        n = len(instances)
        start = next(self._turns) % n
        best: ServiceInstance | None = None
        best_load = 0
        for i in chain(range(start, n), range(start)):
            instance = instances[i]
            if instance.id in exclude:
                continue
            load = keys[i] >> 1
            if best is None or load < best_load:
                best, best_load = instance, load
        return best

    # -- load updates (serialised by the balancer) ---------------------------------------------------

    def acquire_pick(self) -> ServiceInstance:
        """``pick()`` and ``acquired()`` of the result in one: count one more request on it.

        Takes the instance whose turn it is among the least loaded (one that comes back to that load
        queues behind the others). O(1) amortised: a list read and an addition, plus, now and then,
        filing work that earlier calls left (see the module docstring).
        """
        ring = self._ring
        pos = self._pos
        i = ring[pos]
        pos += 1
        self._pos = pos
        self._keys[i] += self._up[i]  # one more request; the low bit now says "in no list"
        if pos >= self._stop:
            self._after_take()
        return self._instances[i]

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Replace all in-flight counts (ids not in the snapshot are ignored, absent ids count 0). O(n)."""
        counts = [0] * len(self._instances)
        index = self._index
        for instance_id, value in in_flight.items():
            i = index.get(instance_id)
            if i is not None:
                counts[i] = max(0, int(value))
        self._reset(counts)

    def acquired(self, instance: ServiceInstance) -> None:
        """One more request in flight to ``instance`` (ignored if not in the snapshot). O(1) amortised.

        An instance at the lowest load (what ``pick()`` returns) is swapped to the cursor and taken
        as ``acquire_pick()`` would take it, so that ``pick()`` + ``acquired()`` + ``released()``
        stay off the slow paths too (at about twice the cost of the fused call).
        """
        i = self._index.get(instance.id)
        if i is None:
            return
        keys = self._keys
        pos = self._pos
        if keys[i] == 2 * self._lo and (self._ring[pos] == i or self._saved_end < 0):
            if self._ring[pos] != i:
                self._to_cursor(i)
            pos += 1
            self._pos = pos
            keys[i] += self._up[i]
            if pos >= self._stop:
                self._after_take()
        else:
            self._move(i, self._load(i, self._count(i) + 1))

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """One request to ``instance`` ended; the count never goes below 0. O(1) amortised.

        The fast path is an instance picked by ``acquire_pick()`` that comes back to the lowest load.
        """
        try:
            i = self._index[instance.id]
        except KeyError:
            return
        keys = self._keys
        key = keys[i] - self._step2[i]
        if key == self._lo2:
            # It was in no list (odd key) and lands on the lowest load: queue it at the ring's end.
            # Its ``where`` is left stale (see _sync).
            self._ring.append(i)
            keys[i] = key - 1
        elif keys[i] > 1:
            # In a list, or landing above or below the lowest load (0 or 1 would mean idle).
            self._move(i, (keys[i] >> 1) - self._step[i])

    def in_flight(self, instance_id: str) -> int:
        """The in-flight count this picker holds for ``instance_id`` (0 if unknown)."""
        i = self._index.get(instance_id)
        return 0 if i is None else self._count(i)


class _ScaledLeastConnectionsPicker(LeastConnectionsPicker):
    """`LeastConnectionsPicker` for weights whose common multiple is too large: keeps the counts.

    Loads are ``in_flight * max_weight**2 // weight`` (see the module docstring). Same structure and
    bounds; the fast paths read and write the counts and do a multiplication and a division more:
    ``acquire_pick()`` + ``released()`` cost about 5 bare method calls instead of 3.
    """

    __slots__ = ("_counts", "_scale", "_weights")

    def _setup_weights(self, weights: list[int]) -> None:
        self._weights = weights
        self._scale = max(weights) ** 2
        self._counts = [0] * len(weights)

    def acquire_pick(self) -> ServiceInstance:
        """``pick()`` and ``acquired()`` of the result in one. O(1) amortised."""
        ring = self._ring
        pos = self._pos
        i = ring[pos]
        pos += 1
        self._pos = pos
        in_flight = self._counts[i] + 1
        self._counts[i] = in_flight
        self._keys[i] = 2 * (in_flight * self._scale // self._weights[i]) + 1
        if pos >= self._stop:
            self._after_take()
        return self._instances[i]

    def acquired(self, instance: ServiceInstance) -> None:
        """One more request in flight to ``instance`` (ignored if not in the snapshot). O(1) amortised."""
        i = self._index.get(instance.id)
        if i is None:
            return
        pos = self._pos
        if self._keys[i] == 2 * self._lo and (self._ring[pos] == i or self._saved_end < 0):
            if self._ring[pos] != i:
                self._to_cursor(i)
            pos += 1
            self._pos = pos
            in_flight = self._counts[i] + 1
            self._counts[i] = in_flight
            self._keys[i] = 2 * (in_flight * self._scale // self._weights[i]) + 1
            if pos >= self._stop:
                self._after_take()
        else:
            self._move(i, self._load(i, self._counts[i] + 1))

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """One request to ``instance`` ended; the count never goes below 0. O(1) amortised."""
        i = self._index.get(instance.id)
        if i is None:
            return
        in_flight = self._counts[i] - 1
        if in_flight < 0:
            return
        load = in_flight * self._scale // self._weights[i]
        if load == self._lo and self._keys[i] & 1:
            self._counts[i] = in_flight
            self._ring.append(i)
            self._keys[i] = 2 * load
        else:
            self._counts[i] = in_flight
            self._move(i, load)

    def _count(self, i: int) -> int:
        return self._counts[i]

    def _load(self, i: int, in_flight: int) -> int:
        self._counts[i] = in_flight
        return in_flight * self._scale // self._weights[i]


def _common_multiple(membership: Membership) -> int:
    """The least common multiple of the weights in ``membership`` (1 if it is empty)."""
    return lcm(*{inst.weight for inst in membership.instances})
