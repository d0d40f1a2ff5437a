"""Reading a service's children incrementally: list them, re-arm watches, read and decode the changed ones.

Private: `zklb.discovery.ServiceWatcher` calls these on the client's worker thread during a sync.
A change costs reads for the changed znodes only: the children list (one read) when children come or
go, one pipelined ``get_async`` per added or changed child, and after a reconnect one pipelined
``exists`` per known child (which re-arms its watch) to find the ones whose ``mzxid`` moved unwatched.
A znode the codec rejects is left out and its reason logged once (again only if the reason changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import WatchedEvent

from zklb._zk import bounded_retry
from zklb.codecs import Codec
from zklb.errors import InstanceSkipped, InvalidInstance
from zklb.instance import ServiceInstance

__all__ = ["MAX_MALFORMED_REMEMBERED", "Child", "ChildReader"]

log = logging.getLogger("zklb.discovery")

#: Malformed znodes remembered as reported (to report each version once); forgotten all at once past it.
MAX_MALFORMED_REMEMBERED = 10_000

Watch = Callable[[WatchedEvent], object]


@dataclass(frozen=True, slots=True)
class Child:
    """What the watcher knows of one child znode: the version it read and what it decoded to."""

    mzxid: int
    instance: ServiceInstance | None  # None: malformed or disabled, so not served


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

    def read(self, client: KazooClient, on_data: Watch, names: set[str], known: dict[str, Child]) -> bool:
        """Read ``names`` pipelined (one get_async each, re-arming data watches) into ``known``."""
        # Sorted, so that `known` stays nearly in id order and each snapshot's sort is close to O(n).
        pending: dict[str, Any] = {
            name: client.get_async(f"{self.path}/{name}", watch=on_data) for name in sorted(names)
        }
        self._read(len(pending))
        changed = False
        for name, result in pending.items():
            try:
                data, stat = result.get(timeout=self._request_timeout)
            except NoNodeError:
                changed |= known.pop(name, None) is not None
                continue
            previous = known.get(name)
            if previous is not None and previous.mzxid == stat.mzxid:
                continue
            known[name] = Child(stat.mzxid, self._decode(name, data))
            changed = True
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
