"""Reading a service's children incrementally: list them, re-arm watches, read and decode the changed ones.

Private: `zklb.discovery.ServiceWatcher` calls these on the client's worker thread during a sync.
A change costs reads for the changed znodes only: the children list (one read) when children come or
go, one pipelined ``get_async`` per added or changed child, and after a reconnect one pipelined
``exists`` per known child (which re-arms its watch) to find the ones whose ``mzxid`` moved unwatched.
A znode the codec rejects is left out and its reason logged once (again only if the reason changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import WatchedEvent

from zklb._zk import bounded_retry
from zklb.codecs import Codec
from zklb.errors import InstanceSkipped, InvalidInstance
from zklb.instance import ServiceInstance

__all__ = ["MAX_MALFORMED_REMEMBERED", "Child", "ChildReader", "instance_changes", "leaving_alone"]

log = logging.getLogger("zklb.discovery")

#: Malformed znodes remembered as reported (to report each version once); forgotten all at once past it.
MAX_MALFORMED_REMEMBERED = 10_000

Watch = Callable[[WatchedEvent], object]


@dataclass(frozen=True, slots=True)
class Child:
    """What the watcher knows of one child znode: the version it read and what it decoded to."""

    mzxid: int
    instance: ServiceInstance | None  # None: malformed or disabled, so not served
    owner: int = 0  # the session of an ephemeral znode (0: a persistent one)


class ChildReader:
    """The reads of one service path's children, each bounded by ``request_timeout``, and their count."""

    def __init__(self, service: str, path: str, codec: Codec, request_timeout: float) -> None:
        self.service = service
        self.path = path
        self.codec = codec
        self._request_timeout = request_timeout
        self.reads = 0  # requests issued so far (children lists, data, exists)
        # Child name -> why it is left out, already logged: once per znode and reason, so a re-read
        # after a reconnect, a restart or a change that keeps it rejected says nothing new.
        self._malformed: dict[str, str] = {}

    def _read(self, count: int = 1) -> None:
        self.reads += count

    def forget(self, name: str) -> None:
        """``name`` left the service: a znode of that name coming back later is reported afresh."""
        self._malformed.pop(name, None)

    def list_children(self, client: KazooClient, on_children: Watch, on_data: Watch) -> list[str] | None:
        """The children of the service path, with a watch; None (and an exists watch) if it is absent."""
        timeout = self._request_timeout
        path = self.path
        while True:
            try:
                self._read()
                names: list[str] = bounded_retry(
                    lambda: client.get_children_async(path, watch=on_children).get(timeout=timeout),
                    deadline=timeout,
                )
                return names
            except NoNodeError:
                pass
            self._read()
            stat = bounded_retry(
                lambda: client.exists_async(path, watch=on_data).get(timeout=timeout),
                deadline=timeout,
            )
            if stat is None:
                return None
            # Created between the two calls: list it now.

    def moved_since_read(self, client: KazooClient, on_data: Watch, known: dict[str, Child]) -> set[str]:
        """Re-arm data watches on every known child; return those whose data moved while unwatched."""
        pending = {name: client.exists_async(f"{self.path}/{name}", watch=on_data) for name in known}
        self._read(len(pending))
        moved = set()
        for name, result in pending.items():
            stat = result.get(timeout=self._request_timeout)
            if stat is None or stat.mzxid != known[name].mzxid:
                moved.add(name)
        return moved

    def read(self, client: KazooClient, on_data: Watch, names: set[str], known: dict[str, Child]) -> set[str]:
        """Read ``names`` pipelined (one get_async each, re-arming data watches) into ``known``; return
        the names whose entry changed (added, replaced or gone)."""
        # Sorted, so that `known` stays nearly in id order and each snapshot's sort is close to O(n).
        pending: dict[str, Any] = {
            name: client.get_async(f"{self.path}/{name}", watch=on_data) for name in sorted(names)
        }
        self._read(len(pending))
        changed = set()
        for name, result in pending.items():
            try:
                data, stat = result.get(timeout=self._request_timeout)
            except NoNodeError:
                if known.pop(name, None) is not None:
                    changed.add(name)
                continue
            previous = known.get(name)
            if previous is not None and previous.mzxid == stat.mzxid:
                continue
            known[name] = Child(stat.mzxid, self._decode(name, data), stat.ephemeralOwner)
            changed.add(name)
        return changed

    def _decode(self, name: str, data: bytes) -> ServiceInstance | None:
        try:
            instance = self.codec.decode(self.service, name, data)
        except InstanceSkipped as exc:
            self._reject(name, logging.INFO, f"not serving {self.path}/{name}: {exc}")
        except InvalidInstance as exc:
            self._reject(name, logging.WARNING, f"skipping malformed instance {self.path}/{name}: {exc}")
        except Exception as exc:  # a codec bug must not stop the watcher either
            reason = f"skipping instance {self.path}/{name}: codec failed: {exc!r}"
            self._reject(name, logging.WARNING, reason)
        else:
            if instance is None:
                self._reject(name, logging.INFO, f"not serving {self.path}/{name}: disabled")
            else:
                self._malformed.pop(name, None)
            return instance
        return None

    def _reject(self, name: str, level: int, message: str) -> None:
        """Log why ``name`` is left out, once per znode and reason (a watch firing again says nothing new)."""
        if self._malformed.get(name) != message:
            if len(self._malformed) >= MAX_MALFORMED_REMEMBERED:
                self._malformed.clear()
            self._malformed[name] = message
            log.log(level, "%s", message)


_owner = attrgetter("owner")


def leaving_alone(known: Mapping[str, Child], gone: set[str]) -> bool:
    """True when no other child of ``known`` shares a session with the deleted ``gone`` ones.

    A registrar's session that closes deletes all its znodes at once, and ZooKeeper reports them one
    by one: publishing the first deletions before the others arrive would show a pool shrinking step
    by step, where the empty-pool grace must see it all go at once. C-level O(n).
    """
    owners = {owner for name in gone if (owner := known[name].owner)}
    if not owners:
        return True  # persistent znodes: each deletion is a request of its own
    sessions = sum(map(owners.__contains__, map(_owner, known.values())))
    return sessions == sum(1 for name in gone if known[name].owner)


def instance_changes(
    before: dict[str, Child], after: dict[str, Child], touched: set[str], held: Mapping[str, ServiceInstance]
) -> tuple[list[str], list[ServiceInstance]] | None:
    """The ids gone and the instances added or replaced when the ``touched`` children of ``before``
    became those of ``after``, ``held`` being the snapshot built from ``before``: O(touched).

    None if an instance would take an id another instance still holds: the caller builds the whole
    snapshot, which refuses duplicates.
    """
    removed: list[str] = []
    upserted: list[ServiceInstance] = []
    released: set[str] = set()  # ids the touched children held before
    for name in touched:
        old = before.get(name)
        new = after.get(name)
        old_instance = None if old is None else old.instance
        new_instance = None if new is None else new.instance
        if old_instance is new_instance:
            continue
        if old_instance is not None:
            released.add(old_instance.id)
            if new_instance is None or new_instance.id != old_instance.id:
                removed.append(old_instance.id)
        if new_instance is not None:
            upserted.append(new_instance)
    ids = {inst.id for inst in upserted}
    if len(ids) != len(upserted) or any(key in held and key not in released for key in ids):
        return None
    return removed, upserted
