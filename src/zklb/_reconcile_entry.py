"""What one reconcile pass does in ZooKeeper for one entry of a registry's desired state.

Private: `zklb._reconciler` runs these on the client's worker thread, one entry at a time, and
decides what to retry. Each operation either brings ZooKeeper in line with the entry or raises
(a kazoo error, `Refused` from `zklb._acl`, `Conflict`), and it is tried again on a later pass:

- `EntryReconciler.ensure`: the registration's znode exists, owned by this session, holds its data,
  and is watched. A sequential (ServerSet) registration gets a new name at each create.
- `EntryReconciler.delete_if_ours`: a tombstoned path is deleted if, and only if, this session owns it.
- `EntryReconciler.sweep_orphans`: the znodes a given-up sequential create may have made unseen go.

A znode on our path owned by another live session is never touched: `Conflict`, logged once per owner.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import WatchedEvent
from kazoo.security import ACL

from zklb._acl import create_ephemeral
from zklb.errors import RegistryError
from zklb.registration import Registration

__all__ = ["Conflict", "DesiredState", "EntryReconciler"]

log = logging.getLogger("zklb.registry")


class Conflict(Exception):
    """Our path is held by another live session: retried, never forced."""


class DesiredState(Protocol):
    """What the operations ask of the registry's desired state (each call takes its lock briefly)."""

    def still_desired(self, registration: Registration) -> bool:
        """Whether ``registration`` is still held (not given up, not closed)."""

    def held_paths(self) -> set[str | None]:
        """The znodes the held sequential registrations own now."""

    def created_unwanted(self, registration: Registration, path: str, session: int) -> bool:
        """After a create made ``path``: True (and ``path`` tombstoned) if it is no longer desired."""


class EntryReconciler:
    """The ZooKeeper side of one reconcile pass: ``client`` in ``session``, each request ``timeout``-bound.

    ``watch`` is set on every registration znode read, so that its change or deletion wakes a pass;
    ``conflicts`` (path -> foreign owner already logged) outlives the pass, so each is logged once.
    """

    def __init__(
        self,
        client: KazooClient,
        session: int,
        *,
        timeout: float,
        acl: tuple[ACL, ...] | None,
        watch: Callable[[WatchedEvent], object],
        desired: DesiredState,
        conflicts: dict[str, int],
    ) -> None:
        self.client = client
        self.session = session
        self._timeout = timeout
        self._acl = acl
        self._watch = watch
        self._desired = desired
        self._conflicts = conflicts

    def ensure(self, registration: Registration, data: bytes) -> None:
        """Make the registration's znode exist, owned by this session, holding ``data`` (and watched)."""
        if registration.sequential:
            self._ensure_sequential(registration, data)
            return
        client, session, timeout = self.client, self.session, self._timeout
        path = registration.path
        for _ in range(4):  # read, write (create or set), read back; once more if it raced another writer
            try:
                current, stat = client.get_async(path, watch=self._watch).get(timeout=timeout)
            except NoNodeError:
                if not self._desired.still_desired(registration):
                    return  # given up or closed while this pass was waiting: create nothing
                wanted = functools.partial(self._desired.still_desired, registration)
                try:
                    if create_ephemeral(client, path, data, self._acl, timeout, wanted=wanted) is None:
                        return  # given up while a request before the create waited: create nothing
                    self._conflicts.pop(path, None)
                    continue  # read it back: that arms the watch on our own znode
                except NodeExistsError:
                    continue
            if stat.ephemeralOwner != session:
                self._conflict(path, stat.ephemeralOwner)  # watched: its deletion wakes us
            if self._up_to_date(registration, path, current=current, version=stat.version, data=data):
                return
            # Read it back either way: the write fired (used up) the watch the first read set.
        raise RegistryError(f"{path} kept changing while being registered")

    def _ensure_sequential(self, registration: Registration, data: bytes) -> None:
        """`ensure` for a sequential registration, whose znode name ZooKeeper picks at each create.

        The znode it holds is read (which arms the watch) and brought up to date; if it is gone (a
        session expiry, a delete) a new one is created, under a new name. A create that failed in a
        way that may still have landed (a timeout, a lost connection) leaves ``_uncertain`` set: before
        creating again, the pass looks for that znode (ours, with our data, held by no one) and adopts it.
        """
        client, session, timeout = self.client, self.session, self._timeout
        for _ in range(4):
            path = registration._path
            if path is None:
                if not self._desired.still_desired(registration):
                    return
                found = self._find_uncreated(registration)
                if found is None:
                    # From here until the create answers: it may land unseen, holding ``data``.
                    uncertain = registration._uncertain
                    sent = uncertain[1] if uncertain is not None and uncertain[0] == session else frozenset()
                    registration._uncertain = (session, sent | {data})
                    wanted = functools.partial(self._desired.still_desired, registration)
                    found = create_ephemeral(
                        client, registration.prefix, data, self._acl, timeout, sequence=True, wanted=wanted
                    )
                    if found is None:
                        return  # given up while a request before the create waited
                registration._created(found)
                if self._desired.created_unwanted(registration, found, session):
                    return  # given up while it was being created: tombstoned
                continue  # read it back: that arms the watch
            try:
                current, stat = client.get_async(path, watch=self._watch).get(timeout=timeout)
            except NoNodeError:
                registration._forget_znode()
                continue
            if stat.ephemeralOwner != session:
                registration._forget_znode()  # an earlier session's, and that session is over
                continue
            if self._up_to_date(registration, path, current=current, version=stat.version, data=data):
                return
        raise RegistryError(f"{registration.prefix} kept changing while being registered")

    def _up_to_date(
        self, registration: Registration, path: str, *, current: bytes, version: int, data: bytes
    ) -> bool:
        """True if ``path`` (read at ``version``) needs no write; else write ``data`` there (False: read
        it back, as the write may have raced another one)."""
        if current == data or not self._desired.still_desired(registration):
            return True
        try:
            self.client.set_async(path, data, version=version).get(timeout=self._timeout)
        except (BadVersionError, NoNodeError):
            pass
        return False

    def _find_uncreated(self, registration: Registration) -> str | None:
        """The znode an uncertain create of ``registration`` made in this session, if it landed (with
        the data of its time, which may have changed since: the pass brings it up to date after)."""
        uncertain = registration._uncertain
        if uncertain is None or uncertain[0] != self.session:
            return None
        held = self._desired.held_paths()
        for path in self._session_znodes(registration.prefix, uncertain[1]):
            if path not in held:
                return path
        return None

    def _session_znodes(self, prefix: str, data: frozenset[bytes]) -> list[str]:
        """The znodes named ``prefix<sequence>`` that this session owns and that hold one of ``data``."""
        client, timeout = self.client, self._timeout
        parent, _, stem = prefix.rpartition("/")
        try:
            names = client.get_children_async(parent or "/").get(timeout=timeout)
        except NoNodeError:
            return []
        paths = [f"{parent}/{name}" for name in sorted(names) if name.startswith(stem)]
        pending = [(path, client.get_async(path)) for path in paths]
        found = []
        for path, result in pending:
            try:
                current, stat = result.get(timeout=timeout)
            except NoNodeError:
                continue
            if stat.ephemeralOwner == self.session and current in data:
                found.append(path)
        return found

    def sweep_orphans(self, prefix: str, data: frozenset[bytes]) -> None:
        """Delete the znodes a given-up sequential registration's lost create may have made."""
        held = self._desired.held_paths()
        for path in self._session_znodes(prefix, data):
            if path not in held:
                try:
                    self.client.delete_async(path).get(timeout=self._timeout)
                except NoNodeError:
                    pass

    def delete_if_ours(self, path: str) -> None:
        """Delete ``path`` if this session owns it; a znode already gone is fine."""
        client, timeout = self.client, self._timeout
        try:
            _, stat = client.get_async(path).get(timeout=timeout)
            if stat.ephemeralOwner == self.session:
                client.delete_async(path, version=stat.version).get(timeout=timeout)
        except NoNodeError:
            pass

    def _conflict(self, path: str, owner: int) -> None:
        message = (
            f"{path} is held by another ZooKeeper session 0x{owner:x} (this one is 0x{self.session:x}); "
            "zklb never deletes another session's znode and retries until it goes"
        )
        if self._conflicts.get(path) != owner:
            self._conflicts[path] = owner
            log.error("registry: %s", message)
        raise Conflict(message)
