"""`PoolInstall`: installing a new membership (or strategy) in a pool, built off the hot path.

A membership change or a strategy change builds the new pickers (the whole pool's, the preferred
instances', the TLS instances') and counters off to the side, under ``_update_lock``, which the hot
path never takes, then swaps them in under the short lock. The counters of instances that stay are the
same objects, so in-flight counts survive the change. Snapshots older than the one installed are
ignored, so a late listener call cannot roll back; once closed, nothing installs anything again.

A snapshot derived from the installed one (the watcher's, one change among many) is installed from
its change alone where nothing needs the whole pool walked in Python: the draining set, the counters
and the TLS split are carried over and patched, O(changes); only the strategy's picker is built anew
(round robin's in O(1), weighted round robin's in C). A load-tracking picker (it is seeded with every
instance's count), a filter, preferred instances or a mixed TLS pool take the whole rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import NamedTuple

from zklb._pool_outcomes import PoolOutcomes
from zklb._pool_state import State, seed_load_trackers
from zklb.membership import Membership
from zklb.stats import StatsRecorder
from zklb.strategies import Picker

__all__ = ["PoolInstall"]

log = logging.getLogger("zklb.balancer")


class _Plan(NamedTuple):
    """What an install swaps in, built off to the side."""

    membership: Membership  # after the filter
    picker: Picker | None
    preferred: Membership | None
    preferred_picker: Picker | None
    draining: frozenset[str]
    slots: dict[str, StatsRecorder]
    departed: dict[str, StatsRecorder]
    tls_picker: Picker | None
    tls_ids: frozenset[str]
    tls_all: bool


class PoolInstall(PoolOutcomes):
    """Swapping in a pool's membership: its pickers, counters, draining set, slow start and health."""

    __slots__ = ()

    def _install(self, membership: Membership) -> None:
        if self._deferred:
            self._drain()  # counts of the instances that stay are carried over: apply what is queued
        with self._update_lock:
            self._install_locked(membership, force=False)

    def _install_locked(self, membership: Membership, *, force: bool) -> None:
        if self._state is State.CLOSED:
            return  # nothing revives a closed balancer, a late listener call included
        if not force and membership.version <= self._membership.version and self._picker is not None:
            return  # an older or the same snapshot: never roll back
        first = self._membership.version == 0  # the balancer's first membership: its servers are warm
        plan = None if force else self._plan_change(membership)
        if plan is None:
            plan = self._plan_whole(membership)
        self._swap(plan, first)

    def _plan_whole(self, membership: Membership) -> _Plan:
        """Everything built from the whole of ``membership``: O(n)."""
        membership = self._selection.kept(membership)
        preferred = self._selection.preferred(membership)
        # The preferred picker first: a strategy that carries state to its next picker (peak_ewma) then
        # carries the whole pool's.
        preferred_picker = self._strategy.build(preferred) if preferred is not None else None
        picker = self._strategy.build(membership) if membership.instances else None
        # (Only an instance with metadata can be draining: most have none, and skip the lookup.)
        draining = frozenset(i.id for i in membership.instances if i.metadata and i.draining)
        slots, departed = self._carry_slots(membership)
        secure = tuple(inst for inst in membership.instances if inst.ssl_port is not None)
        tls_all = bool(secure) and len(secure) == len(membership)
        tls_picker = picker if tls_all else None
        if secure and not tls_all:
            tls_picker = self._strategy.build(Membership(membership.service, membership.version, secure))
        tls_ids = frozenset(inst.id for inst in secure)
        return _Plan(
            membership,
            picker,
            preferred,
            preferred_picker,
            draining,
            slots,
            departed,
            tls_picker,
            tls_ids,
            tls_all,
        )

    def _plan_change(self, membership: Membership) -> _Plan | None:
        """``membership`` built from its change to the installed one, O(changes) but for the picker
        (and slow start's ramps); None where the whole rebuild is needed (see the module docstring)."""
        change = membership._change_from(self._membership)
        picker = self._picker
        selection = self._selection
        if (
            change is None
            or picker is None
            or picker.tracks_load
            or not membership.instances
            or selection.filter is not None
            or selection.prefer is not None
        ):
            return None
        upserted = change.upserted
        secure = [inst.id for inst in upserted if inst.ssl_port is not None]
        if self._tls_all:
            if len(secure) != len(upserted):
                return None
            tls_ids = self._tls_ids.difference(change.removed).union(secure)
        elif self._tls_ids or secure:
            return None  # a mixed pool (or one becoming so): its TLS picker is built from the whole
        else:
            tls_ids = self._tls_ids
        new = picker = self._strategy.build(membership)
        touched = change.removed.union(inst.id for inst in upserted)
        draining = self._draining.difference(touched).union(
            inst.id for inst in upserted if inst.metadata and inst.draining
        )
        slots, departed = self._carry_changed_slots(change.removed, sorted(inst.id for inst in upserted))
        return _Plan(
            membership,
            new,
            None,
            None,
            draining,
            slots,
            departed,
            new if self._tls_all else None,
            tls_ids,
            self._tls_all,
        )

    def _swap(self, plan: _Plan, first: bool) -> None:
        """Swap ``plan`` in under the short lock, and wake `wait_for`."""
        membership, picker, slots = plan.membership, plan.picker, plan.slots
        tls_picker, tls_ids = plan.tls_picker, plan.tls_ids
        with self._exclusive():  # seeded from the counters while no request can start or end
            if self._is_closed():  # re-read: close() may have run while the picker was built
                return
            self._whole, self._preferred = picker, plan.preferred_picker
            preferred = plan.preferred
            self._preferred_ids = frozenset() if preferred is None else frozenset(preferred.by_id)
            if self._ramp is not None:
                self._ramp.follow(membership.instances, self._clock(), first)
            mirror = tls_picker if tls_picker is not picker and tls_picker is not None else None
            # Exact: a load-tracking picker's counts change only with their ownership. O(n), the one
            # place they are held that long (a rebuild of a least-connections pool). The counters are
            # read once for the picker and its TLS mirror.
            seed_load_trackers(slots, (picker, mirror))
            self._tls_picker, self._tls_ids, self._tls_all = tls_picker, tls_ids, plan.tls_all
            self._tls_mirror = mirror if mirror is not None and mirror.tracks_load else None
            if self._health is not None:
                self._health.retain(membership.by_id)
            self._membership = membership
            self._picker = picker
            self._slots = slots
            self._departed = plan.departed
            self._draining = plan.draining
            self._count_on_locked(picker)
            self._phantom = {}  # the new picker was seeded with real counts only
            notice = self._refresh_locked()
        if notice:
            log.warning("%s", notice)
        with self._installed:
            self._installed.notify_all()

    def _carry_slots(
        self, membership: Membership
    ) -> tuple[dict[str, StatsRecorder], dict[str, StatsRecorder]]:
        """The counters for ``membership``: the same objects for instances that stay; fresh ones
        (statistics forgotten) for newcomers, keeping the in-flight count of one that comes back.
        Also the counters of those that leave with requests in flight. O(n), without the lock."""
        old = self._slots
        keys = membership.by_id.keys()
        # Set operations and a dict copy run in C: one change among 10,000 costs well under a
        # millisecond here, where a Python loop over every instance cost several.
        return self._carry_changed_slots(old.keys() - keys, sorted(keys - old.keys()))

    def _carry_changed_slots(
        self, left: Collection[str], joined: Iterable[str]
    ) -> tuple[dict[str, StatsRecorder], dict[str, StatsRecorder]]:
        """`_carry_slots` given the ids that ``left`` and those that may have ``joined`` (ids that
        stay are skipped), in id order: a C-level copy and O(changes). Newcomers' counters are made in
        id order, the order picks visit them in: at 10,000 instances, counters allocated in set order
        made every round-robin acquire() a few cache misses dearer (measured: +30 %)."""
        old, gone = self._slots, self._departed
        slots = dict(old)
        for key in left:
            del slots[key]
        for key in joined:
            if key in slots:
                continue  # changed, not new: its counters stay
            slot = gone.get(key)
            if slot is None:
                slot = StatsRecorder()
            else:
                slot.forget()
            slots[key] = slot
        departed = {k: v for k, v in gone.items() if k not in slots and v.in_flight()}
        for key in left:
            if old[key].in_flight():
                departed[key] = old[key]
        return slots, departed
