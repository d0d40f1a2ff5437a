"""`Membership`: an immutable, versioned snapshot of one service's live instances."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType

from zklb.instance import ServiceInstance

__all__ = ["Membership"]

# C-level key: building a snapshot of thousands of instances happens on every membership change.
_by_id = attrgetter("id")


@dataclass(frozen=True, slots=True)
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
