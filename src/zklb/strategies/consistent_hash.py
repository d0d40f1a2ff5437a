"""Consistent hashing on a ring (Karger's; Envoy's ``RING_HASH``, ketama), stable across processes.

Each instance owns points on a ring of 32-bit positions, as many as its weight times a fixed number
per unit of weight; a key belongs to the owner of the first point at or after the key's position
(wrapping around). Why a ring and not Maglev, rendezvous or bounded load: measured in
``benchmarks/bench_hashing.py`` and docs/strategies.md. In short: an instance leaving moves exactly its
own keys and no other (Maglev moves a few others too), a pick is a bucket lookup and a search of
one or two points
(rendezvous is O(n) per pick), and the build needs no O(M log M) table fill (Maglev's, seconds in
Python at 10,000 instances).

Nothing depends on the process: Python's ``hash()`` is salted per process and is never used. Points
come from BLAKE2b of the instance id; a key's position is its CRC-32 (``zlib.crc32``, the same on
every platform and version: one C call, where a BLAKE2b digest or a 64-bit mix in Python would double
the cost of a pick). Every process with the same membership maps a key to the same instance.

An instance to skip (ejected, draining, or already tried by a retry) is walked past: the key goes to
the next point's owner that is not skipped, the same in every process, and comes back when the
instance does, since the ring itself is not rebuilt.
"""

from __future__ import annotations

import random
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from hashlib import blake2b
from itertools import accumulate
from struct import Struct
from typing import ClassVar

from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies.base import Picker
from zklb.strategies.random import RandomPicker

__all__ = ["ConsistentHash", "ConsistentHashPicker", "HashKey", "key_position"]

#: A key: text (hashed as UTF-8), bytes, or an int (hashed as its decimal text).
HashKey = str | bytes | int

_crc32 = zlib.crc32
_POINTS_PER_DIGEST = 16
_DIGEST_POINTS = Struct("<16I")  # one 64-byte BLAKE2b digest gives sixteen ring points


def key_position(key: HashKey) -> int:
    """The ring position (0 <= p < 2**32) of ``key``; the same in every process and on every platform."""
    if isinstance(key, str):
        data = key.encode()
    elif isinstance(key, bytes):
        data = key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = str(key).encode()
    else:
        raise TypeError(f"a hash key must be str, bytes or int, got {type(key).__name__}")
    return zlib.crc32(data)


class ConsistentHash:
    """Sticky picks: ``lb.get_server(key=...)`` maps equal keys to the same instance (ring hash).

    ``points_per_weight`` points on the ring per unit of weight (more: better balance, bigger ring),
    ``max_points`` bounds the ring (the points per unit of weight shrink to fit). Cost: O(P log P) to
    build for P points, O(1) expected per keyed pick (CRC-32, a bucket, one or two points), O(1) per pick
    without a key (random, as `RandomChoice`). State: two lists of P entries.
    """

    name: ClassVar[str] = "consistent_hash"

    def __init__(
        self,
        *,
        points_per_weight: int = 100,
        max_points: int = 1 << 19,
        rng: random.Random | None = None,
    ) -> None:
        for label, value in (("points_per_weight", points_per_weight), ("max_points", max_points)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{label} must be a positive integer, got {value!r}")
        self.points_per_weight = points_per_weight
        self.max_points = max_points
        self.rng = rng if rng is not None else random.Random()

    def build(self, membership: Membership) -> Picker:
        """A `ConsistentHashPicker`: the ring of ``membership``."""
        return ConsistentHashPicker(membership, self.points_per_weight, self.max_points, self.rng)

    def __repr__(self) -> str:
        return f"ConsistentHash(points_per_weight={self.points_per_weight}, max_points={self.max_points})"


class ConsistentHashPicker:
    """The ring of one snapshot; ``pick_key`` is the keyed pick, ``pick`` a random one.

    Threading: nothing changes after ``__init__``; picks share no mutable state.
    """

    tracks_load: bool = False

    __slots__ = ("_anywhere", "_instances", "_owners", "_points", "_shift", "_starts", "pick")

    #: A uniformly random instance (a pick without a key). O(1), lock-free.
    pick: Callable[[], ServiceInstance]

    def __init__(
        self, membership: Membership, points_per_weight: int, max_points: int, rng: random.Random
    ) -> None:
        instances = membership.instances
        if not instances:
            raise ValueError(f"cannot balance over the empty membership of {membership.service!r}")
        self._instances = instances
        self._anywhere = RandomPicker(membership, rng)  # picks without a key
        self.pick = self._anywhere.pick
        total = sum(inst.weight for inst in instances)
        per_weight = min(float(points_per_weight), max_points / total)
        ring: list[tuple[int, str, int]] = []
        for index, inst in enumerate(instances):
            count = max(1, round(inst.weight * per_weight))
            name = inst.id.encode()
            for block in range((count + _POINTS_PER_DIGEST - 1) // _POINTS_PER_DIGEST):
                # A fixed-length counter first, so that no two (id, block) pairs hash the same bytes.
                digest = blake2b(block.to_bytes(4, "little") + name, digest_size=64).digest()
                for point in _DIGEST_POINTS.unpack(digest)[: count - _POINTS_PER_DIGEST * block]:
                    ring.append((point, inst.id, index))
        ring.sort()  # ties broken by id: the same order in every process
        # 4 bytes a point in an array: a list of ints costs 40 and a binary search over it chases a
        # pointer per step (measured: microseconds per pick on a ring of 500,000 points).
        self._points = array("I", [point for point, _, _ in ring])
        # One owner more than points: the first again, for a key past the last point (the ring wraps).
        self._owners = [instances[index] for _, _, index in ring]
        self._owners.append(self._owners[0])
        # Buckets of the 32-bit space, about one point each: _starts[b] is the first point at or after
        # bucket b's start, so a key's point lies in _starts[b] .. _starts[b + 1] (a search of one or
        # two entries instead of twenty).
        bits = min(31, max(1, (len(ring) - 1).bit_length()))
        self._shift = 32 - bits
        counts = [0] * ((1 << bits) + 1)
        shift = self._shift
        for point, _, _ in ring:
            counts[(point >> shift) + 1] += 1
        self._starts = array("I", accumulate(counts))

    @property
    def points(self) -> int:
        """The number of points on the ring."""
        return len(self._points)

    def pick_key(self, key: HashKey, skip: Collection[str] = ()) -> ServiceInstance | None:
        """The owner of ``key``; past instances in ``skip``, the next owner along the ring; None if all are.

        O(1) expected plus the points walked past (a skipped instance's run of points, O(P / n) expected).
        """
        # The common case (a str key) inline: a function call is a sizeable part of this pick's cost.
        position = _crc32(key.encode()) if type(key) is str else key_position(key)
        bucket = position >> self._shift
        starts = self._starts
        i = starts[bucket]
        end = starts[bucket + 1]
        if i < end:
            # About one point a bucket: a step or two in Python is cheaper than a call to bisect.
            points = self._points
            if end - i > 4:
                i = bisect_left(points, position, i, end)
            else:
                while i < end and points[i] < position:
                    i += 1
        owner = self._owners[i]  # i == len(points) past the last point: its sentinel, the first owner
        if not skip or owner.id not in skip:
            return owner
        if len(skip) >= len(self._instances) and all(inst.id in skip for inst in self._instances):
            return None
        owners = self._owners
        size = len(self._points)
        for step in range(1, size):
            owner = owners[(i + step) % size]
            if owner.id not in skip:
                return owner
        return None  # pragma: no cover - some instance is not skipped, and it owns a point

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        """A uniformly random instance not in ``exclude``, or None (a retry without a key). O(n)."""
        return self._anywhere.pick_excluding(exclude)

    def seed(self, in_flight: Mapping[str, int]) -> None:
        """Ignored: consistent hashing does not look at load."""

    def acquired(self, instance: ServiceInstance) -> None:
        """Ignored: consistent hashing does not look at load."""

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """Ignored: consistent hashing does not look at load."""
