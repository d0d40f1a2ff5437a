"""Re-arming watches after a reconnect with ZooKeeper's ``SetWatches``: O(1) requests, not one per znode.

Private: `zklb._membership_sync` uses it. kazoo 2.11 forgets every watch when a connection drops (on
SUSPENDED it empties its watch tables and tells each callback ``EventType.NONE``) and never sends the
``SetWatches`` request the Java client sends when it reconnects. Without it a watcher re-arms its
watches by reading each znode again: one request per instance and client after every reconnect.

Rules of this module:

- One `Rewatcher` per kazoo client, shared by every watcher on it: one ``SetWatches`` per reconnect
  (split into requests of at most `MAX_PATH_BYTES` of paths, as the Java client does), whatever the
  number of watchers.
- On SUSPENDED (kazoo calls its listeners before it empties its tables) it notes which of its owners'
  callbacks are armed on which paths, with ``client.last_zxid``, the last zxid this client saw. On
  CONNECTED to the *same* session it puts exactly those callbacks back in kazoo's tables and sends
  ``SetWatches(last_zxid, ...)``: the server fires NodeDataChanged / NodeDeleted / NodeChildrenChanged /
  NodeCreated for whatever changed after that zxid (events kazoo hands to the same callbacks, exactly
  as a normal watch) and re-arms the rest. Nothing is done after LOST (an expired session has no
  watches to restore: its owners re-read everything).
- An owner removed meanwhile is not re-armed. If a ``SetWatches`` fails (the connection drops again, an
  error), every owner it covered is told to re-sync in full (``WatchSet.fallback``), as if there were no
  ``SetWatches`` at all.
- It runs on kazoo's threads and never blocks them: a short lock, no waiting; the requests are queued
  with kazoo's non-blocking ``_call``.
- kazoo private API used, checked once per client (`supported`): ``client._data_watchers`` and
  ``client._child_watchers`` (path -> set of callbacks, keyed by the full, chrooted path),
  ``client._call(request, async_result)``, ``client._session_id`` (its ``client_id`` is None while
  disconnected), and kazoo's handling of a request object (``type``, ``serialize()``,
  ``deserialize()``); ``client.last_zxid`` is public but undocumented. When they are not as
  expected every reconnect is a full re-sync.
"""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.protocol.states import WatchedEvent

from zklb import _fork
from zklb._worker import ClientWorker

__all__ = ["MAX_PATH_BYTES", "SET_WATCHES", "Rewatcher", "SetWatches", "WatchSet", "supported"]

log = logging.getLogger("zklb.discovery")

#: ZooKeeper's opcode of SetWatches (relativeZxid, dataWatches, existWatches, childWatches).
SET_WATCHES = 101

#: The most bytes of paths one SetWatches carries (the Java client's limit, well under jute.maxbuffer).
MAX_PATH_BYTES = 128 * 1024

_long = struct.Struct("!q")
_int = struct.Struct("!i")

Watch = Callable[[WatchedEvent], object]


class SetWatches:
    """The SetWatches request, as kazoo's connection sends request objects: ``type`` and ``serialize()``.

    Its reply has no body: ``deserialize`` returns True, as kazoo's own bodiless requests do.
    """

    type = SET_WATCHES

    __slots__ = ("child", "data", "exist", "relative_zxid")

    def __init__(
        self, relative_zxid: int, data: tuple[str, ...], exist: tuple[str, ...], child: tuple[str, ...]
    ) -> None:
        self.relative_zxid = relative_zxid
        self.data = data
        self.exist = exist
        self.child = child

    def serialize(self) -> bytes:
        parts = [_long.pack(self.relative_zxid)]
        for paths in (self.data, self.exist, self.child):
            parts.append(_int.pack(len(paths)))
            for path in paths:
                encoded = path.encode("utf-8")
                parts.append(_int.pack(len(encoded)))
                parts.append(encoded)
        return b"".join(parts)

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        return True

    def __repr__(self) -> str:  # kazoo logs each request it sends: counts, not 128 KiB of paths
        return (
            f"SetWatches(relative_zxid={self.relative_zxid:#x}, data={len(self.data)}, "
            f"exist={len(self.exist)}, child={len(self.child)})"
        )


def split(
    relative_zxid: int,
    data: Iterable[str],
    exist: Iterable[str],
    child: Iterable[str],
    limit: int = MAX_PATH_BYTES,
) -> list[SetWatches]:
    """The SetWatches requests that carry these paths, each with at most ``limit`` bytes of paths."""
    requests: list[SetWatches] = []
    lists: tuple[list[str], list[str], list[str]] = ([], [], [])
    size = 0
    for kind, paths in enumerate((data, exist, child)):
        for path in paths:
            length = len(path.encode("utf-8"))
            if size and size + length > limit:
                requests.append(SetWatches(relative_zxid, *(tuple(x) for x in lists)))
                lists, size = ([], [], []), 0
            lists[kind].append(path)
            size += length
    if size:
        requests.append(SetWatches(relative_zxid, *(tuple(x) for x in lists)))
    return requests


def supported(client: KazooClient) -> bool:
    """True if ``client``'s internals are those this module relies on (kazoo 2.x as of 2.11)."""
    return (
        isinstance(getattr(client, "_data_watchers", None), dict)
        and isinstance(getattr(client, "_child_watchers", None), dict)
        and callable(getattr(client, "_call", None))
        and isinstance(getattr(client, "last_zxid", None), int)
        and hasattr(client, "_session_id")
        and callable(getattr(getattr(client, "handler", None), "async_result", None))
    )


@dataclass(frozen=True, slots=True, eq=False)
class WatchSet:
    """The watches of one owner (one run of a watcher): its two kazoo callbacks and what to do if lost.

    ``absent`` is the path whose data watch is an *exists* watch (the owner sets a data watch there
    only while the znode is missing); every other data watch is on a znode that existed when read.
    ``fallback()`` is called, on one of kazoo's threads, when a SetWatches covering this owner failed:
    it must re-sync in full, without blocking.
    """

    on_children: Watch
    on_data: Watch
    absent: str
    fallback: Callable[[], object]


@dataclass(frozen=True, slots=True)
class _Armed:
    """What was armed at the drop: the session, its last zxid, and each owner's paths."""

    session: int
    zxid: int
    data: dict[WatchSet, tuple[str, ...]]
    child: dict[WatchSet, tuple[str, ...]]


_table_lock = threading.Lock()
_rewatchers: weakref.WeakKeyDictionary[KazooClient, Rewatcher] = weakref.WeakKeyDictionary()


def _forget_rewatchers() -> None:
    """In a fork's child: the parent's clients and workers are not this process's."""
    global _table_lock, _rewatchers  # noqa: PLW0603 - the module's own table, replaced whole
    _table_lock = threading.Lock()
    _rewatchers = weakref.WeakKeyDictionary()


_fork.on_child(_forget_rewatchers)


class Rewatcher:
    """The SetWatches of one kazoo client; get it with `Rewatcher.attach` (None: not supported)."""

    def __init__(self, client: KazooClient, worker: ClientWorker) -> None:
        self._client_ref = weakref.ref(client)
        self._worker = worker
        self._owners: set[WatchSet] = set()
        self._users = 0
        self._lock = threading.Lock()
        self._armed: _Armed | None = None  # noted at SUSPENDED, taken at CONNECTED
        self._covered: frozenset[WatchSet] = frozenset()  # owners the last SetWatches re-armed
        self.sent = 0  # SetWatches requests sent so far (tests, metrics)

    @classmethod
    def attach(cls, client: KazooClient, worker: ClientWorker) -> Rewatcher | None:
        """The rewatcher of ``client`` (made on first use), counting one more user; None if ``client``'s
        kazoo internals are not those this module relies on (every reconnect is then a full re-sync)."""
        with _table_lock:
            rewatcher = _rewatchers.get(client)
            if rewatcher is None:
                if not supported(client):
                    log.debug("kazoo internals not as expected: reconnects re-read every watched znode")
                    return None
                log.debug("reconnects of the same session re-arm watches with SetWatches")
                rewatcher = cls(client, worker)
                _rewatchers[client] = rewatcher
                worker.subscribe(rewatcher._on_state)
            rewatcher._users += 1
            return rewatcher

    def detach(self) -> None:
        """One user fewer; the last one unsubscribes it from the client's worker."""
        with _table_lock:
            self._users -= 1
            if self._users > 0:
                return
            client = self._client_ref()
            if client is not None and _rewatchers.get(client) is self:
                del _rewatchers[client]
        self._worker.unsubscribe(self._on_state)

    def add(self, owner: WatchSet) -> None:
        """Re-arm ``owner``'s watches after each reconnect of the same session, until `remove`."""
        with self._lock:
            self._owners.add(owner)

    def remove(self, owner: WatchSet) -> None:
        """Never re-arm ``owner``'s watches again (from now: call it before taking its callbacks back)."""
        with self._lock:
            self._owners.discard(owner)
            if owner in self._covered:
                self._covered = self._covered - {owner}

    def resumed(self, owner: WatchSet) -> bool:
        """On CONNECTED: True if ``owner``'s watches are being re-armed by SetWatches (whose events, or
        its ``fallback`` if it fails, tell the owner what changed); False: the owner re-syncs in full."""
        self._resume()
        with self._lock:
            return owner in self._covered

    # -- kazoo's connection thread ----------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.SUSPENDED:
            self._note_armed()
        elif state == KazooState.LOST:
            with self._lock:
                self._armed, self._covered = None, frozenset()
        elif state == KazooState.CONNECTED:
            self._resume()

    def _note_armed(self) -> None:
        """Which owner callbacks kazoo holds on which paths, before it forgets them all."""
        client = self._client_ref()
        session = None if client is None else client._session_id  # client_id is None once disconnected
        with self._lock:
            self._covered = frozenset()
            self._armed = None
            if client is None or not session or not self._owners:
                return
            data = _paths_by_owner(client._data_watchers, {o.on_data: o for o in self._owners})
            child = _paths_by_owner(client._child_watchers, {o.on_children: o for o in self._owners})
            self._armed = _Armed(int(session), int(client.last_zxid), data, child)

    def _resume(self) -> None:
        """Put the noted callbacks back in kazoo's tables and send SetWatches (once per reconnect)."""
        client = self._client_ref()
        if client is None:
            return
        with self._lock:
            armed, self._armed = self._armed, None
            if armed is None:
                return
            if client._session_id != armed.session:
                return  # a new session: nothing of the old one is armed on the server
            owners = [o for o in (armed.data.keys() | armed.child.keys()) if o in self._owners]
            data: dict[str, None] = {}
            exist: dict[str, None] = {}
            child: dict[str, None] = {}
            for owner in owners:
                for path in armed.data.get(owner, ()):
                    client._data_watchers.setdefault(path, set()).add(owner.on_data)
                    (exist if path == owner.absent else data)[path] = None
                for path in armed.child.get(owner, ()):
                    client._child_watchers.setdefault(path, set()).add(owner.on_children)
                    child[path] = None
            self._covered = frozenset(owners)
        if not owners:
            return
        requests = split(armed.zxid, data, exist, child)
        log.debug(
            "re-arming %d watches of %d watchers with %d SetWatches from zxid %#x",
            len(data) + len(exist) + len(child),
            len(owners),
            len(requests),
            armed.zxid,
        )
        failed = _Once(lambda: self._fail(owners))
        for request in requests:
            result = client.handler.async_result()
            result.rawlink(lambda done: None if done.successful() else failed(done.exception))
            self.sent += 1
            client._call(request, result)

    def _fail(self, owners: list[WatchSet]) -> None:
        with self._lock:
            owners = [o for o in owners if o in self._owners]
        for owner in owners:
            try:
                owner.fallback()
            except Exception:  # one owner's bug must not keep the others stale
                log.exception("re-sync after a failed SetWatches failed")


class _Once:
    """Call ``action`` on the first failure only (a SetWatches split in several requests fails once)."""

    __slots__ = ("_action", "_done", "_lock")

    def __init__(self, action: Callable[[], object]) -> None:
        self._action = action
        self._lock = threading.Lock()
        self._done = False

    def __call__(self, exc: object) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        log.info("SetWatches after a reconnect failed (%r): re-reading every watched znode", exc)
        self._action()


def _paths_by_owner(table: dict[str, Any], owners: dict[Watch, WatchSet]) -> dict[WatchSet, tuple[str, ...]]:
    """For each owner, the paths of ``table`` (kazoo's path -> callbacks) that hold its callback."""
    found: dict[WatchSet, list[str]] = {}
    for path, callbacks in _items(table):
        for callback in _copy(callbacks):
            owner = owners.get(callback)
            if owner is not None:
                found.setdefault(owner, []).append(path)
    return {owner: tuple(paths) for owner, paths in found.items()}


def _items(table: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    return iter(tuple(table.items()))  # one C-level copy: atomic under the GIL


def _copy(callbacks: Any) -> tuple[Any, ...]:
    return tuple(callbacks)  # a watcher's close may discard from the set on another thread meanwhile
