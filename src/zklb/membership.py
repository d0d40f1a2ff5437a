"""`Membership`: an immutable, versioned snapshot of one service's live instances."""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import cast

from zklb.instance import ServiceInstance

__all__ = ["Membership"]

# C-level key: building a snapshot of thousands of instances happens on every membership change.
_by_id = attrgetter("id")

#: Past this many changed instances a derived snapshot is sorted whole (C-level) rather than spliced.
_SPLICE_LIMIT = 64


@dataclass(frozen=True, slots=True)
class _Change:
    """How a snapshot differs from the one it was derived from (private: see `Membership._change_from`).

    ``removed``: ids no longer present; ``upserted``: instances that joined or whose registration
    changed (new objects; every other instance is the very object the base held).
    """

    base: weakref.ref[Membership]  # weak: a chain of snapshots must not keep every older one alive
    removed: frozenset[str]
    upserted: tuple[ServiceInstance, ...]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Membership:
    """The instances of one service at one moment, in a stable order (sorted by id).

    ``version`` only grows: each change the watcher sees publishes a snapshot with a larger version, so
    a consumer can drop a snapshot older than the one it holds. Snapshots are never modified; a change
    builds a new one.
    """

    service: str
    version: int = 0
    instances: tuple[ServiceInstance, ...] = ()
    by_id: Mapping[str, ServiceInstance] = field(init=False, repr=False, compare=False, hash=False)
    _change: _Change | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.instances, key=_by_id))
        by_id = dict(zip(map(_by_id, ordered), ordered, strict=True))
        if len(by_id) != len(ordered):
            raise ValueError(f"membership of {self.service!r} has duplicate instance ids")
        object.__setattr__(self, "instances", ordered)
        object.__setattr__(self, "by_id", MappingProxyType(by_id))

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[ServiceInstance]:
        return iter(self.instances)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, ServiceInstance):
            return bool(self.by_id.get(item.id) == item)
        return item in self.by_id

    def _derive(
        self, version: int, removed: Collection[str], upserted: Sequence[ServiceInstance]
    ) -> Membership:
        """This snapshot less the ids ``removed``, with ``upserted`` added or replacing their id's.

        O(changes) Python work and C-level copies: one change among 10,000 instances must not cost a
        rebuild of all of them. The caller guarantees ``upserted`` holds distinct ids, none of which
        belongs to another instance that stays. Records the change (see `_change_from`).
        """
        replaced = {inst.id for inst in upserted}
        removed = [key for key in removed if key not in replaced]  # an id that stays is replaced
        # The proxy's copy() is its dict's C-level copy; dict(proxy) would go key by key.
        by_id = cast("MappingProxyType[str, ServiceInstance]", self.by_id).copy()
        for key in removed:
            del by_id[key]
        for inst in upserted:
            by_id[inst.id] = inst
        if len(removed) + len(upserted) > _SPLICE_LIMIT:
            ordered = tuple(sorted(by_id.values(), key=_by_id))
        else:
            items = list(self.instances)
            for key in removed:
                del items[bisect_left(items, key, key=_by_id)]
            for inst in upserted:
                at = bisect_left(items, inst.id, key=_by_id)
                if at < len(items) and items[at].id == inst.id:
                    items[at] = inst
                else:
                    items.insert(at, inst)
            ordered = tuple(items)
        derived = object.__new__(Membership)
        for name, value in (
            ("service", self.service),
            ("version", version),
            ("instances", ordered),
            ("by_id", MappingProxyType(by_id)),
            ("_change", _Change(weakref.ref(self), frozenset(removed), tuple(upserted))),
        ):
            object.__setattr__(derived, name, value)
        return derived

    def _change_from(self, base: Membership) -> _Change | None:
        """How this snapshot differs from ``base``, if it was derived from that very snapshot; else None."""
        change = self._change
        if change is None or change.base() is not base:
            return None
        return change
