"""Riding out a mass departure: keep the last pool for a while when every instance leaves at once.

Private: `zklb.discovery.ServiceWatcher` asks it before each publish. Every instance gone at once is
far more often one registrar's session expiring (its servers still up, their znodes re-created one by
one within a second) than a whole service stopping. So when the pool would become empty, the last one
is kept for ``grace`` seconds, and while only some of it has come back (a strict subset, nothing new),
it is still kept: a pool of one returning instance would take the whole load. When all are back, a new
one appears, or the grace is over, what ZooKeeper lists is published. Instances this process removes
on purpose (`EmptyGrace.expect_departure`) are not a blip: their going is published at once.

Pure (no kazoo, no I/O, an injected clock) and not thread-safe: the watcher serialises the calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping

from zklb.instance import ServiceInstance

__all__ = ["EmptyGrace"]

log = logging.getLogger("zklb.discovery")


class EmptyGrace:
    """The hold of one service's last pool (``path`` names it in the log); ``grace`` 0: never hold.

    Not thread-safe: its owner serialises the calls (``departing`` changes on two threads).
    """

    def __init__(self, path: str, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.grace = grace
        self._clock = clock
        self.held_since: float | None = None  # when ZooKeeper started listing no instance, if held
        self.departing: frozenset[str] = frozenset()  # ids this process removes on purpose

    def hold(
        self, held: Mapping[str, ServiceInstance], instances: tuple[ServiceInstance, ...], *, loaded: bool
    ) -> float | None:
        """Seconds to keep publishing ``held`` (the last pool, by id) rather than ``instances``, what
        ZooKeeper now lists; None: publish ``instances`` now."""
        if self.held_since is None:
            if instances or not held or self.grace <= 0 or not loaded:
                return None
            if held.keys() <= self.departing:  # every one of them was removed on purpose, here
                self.departing -= held.keys()
                return None
            self.held_since = self._clock()
            log.warning(
                "every instance of %s left at once; keeping the last %d for %g s in case they come back",
                self.path,
                len(held),
                self.grace,
            )
        elif not {inst.id for inst in instances} < held.keys():
            return None
        remaining = self.held_since + self.grace - self._clock()
        return remaining if remaining > 0 else None

    def end(self) -> None:
        """Publishing what ZooKeeper lists (or no longer following it): no pool is held."""
        self.held_since = None

    def expect_departure(self, instance_id: str) -> None:
        """This process is removing ``instance_id`` on purpose: its going is not a blip to ride out."""
        self.departing = self.departing | {instance_id}

    def keep_departing(self, listed: Collection[str]) -> None:
        """Forget the departures already seen: those no longer ``listed`` need no more remembering."""
        self.departing = frozenset(k for k in self.departing if k in listed)
