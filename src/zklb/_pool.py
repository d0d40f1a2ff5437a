"""`Pool`: one service's instances in memory, a strategy, passive health, and the hot path.

The part of a `LoadBalancer` that does no I/O and knows nothing of ZooKeeper: the balancer feeds it
membership snapshots (``_install``) and its callers' outcomes (through leases). ``LoadBalancer.static``
is a pool and nothing more.

The pool is built in layers, one module each (`zklb._pool_state` lists them); `Pool`, here, is the
top one: the hot path and the public calls. Rules of the pool, whichever layer keeps them:

- The hot path (``get_server()``) reads one reference, the current pick function, and calls it: no
  lock, no I/O. ``acquire()`` and a lease's release count on the instance's `StatsRecorder` with
  lock-free counters, and record a success there without a lock too. A picker that tracks load (least
  connections) has its counts changed by one thread at a time, but not under the lock: the hot path
  takes their *ownership*, a one-item list popped and appended (atomic C calls under the GIL, a
  quarter of a lock's cost), and never waits for it. An ``acquire()`` that finds it taken goes the
  locked way, which waits for the owner (busy for a few hundred nanoseconds); a release that finds it
  taken is queued. Locked sections that change those counts take the lock, then the ownership
  (`_exclusive`). For the least-connections picker the picker's own fast paths are written out in
  ``acquire()`` and in its lease's end (`CountedLease`), which carries the instance's index in the
  picker: no call into the picker, no lookup by id (``_counting``; a new one with each picker).
  Failures, and successes that end a probation or a run of failures, take the lock (health
  decisions are serialised).
- Nothing holds the short lock for more than O(1) but a rebuild's swap: ``stats()`` and
  ``pool_stats()`` take references under it (health's tables are copy-on-write) and build outside.
- A membership change or a strategy change builds the new picker and counters off to the side (under
  ``_update_lock``, which the hot path never takes), then swaps them in under the short lock. The
  counters of instances that stay are the same objects, so in-flight counts survive the change.
- Ejected and draining instances are *skipped*, not removed: the picker is not rebuilt when one is
  ejected. While nothing is ejected or skipped the pick function is the picker's own ``pick`` (no
  cost); otherwise a wrapper that re-picks past skipped ones and brings ejected ones back on time.
- A release never waits for the lock or the ownership (it may run from a finaliser inside a locked
  section of its own thread): one that finds either taken is queued and applied by the next holder,
  before any count is read.
- ``acquire(tls=True)`` (an ``https://`` request) picks only among instances with a TLS port: when
  every instance has one it is the ordinary path; in a mixed pool a second picker over just those
  instances is built with each membership (off the hot path), and a load-tracking one is told of every
  request to its instances, whoever picked them, so both pickers see the same load. No scan per pick.
- Snapshots older than the one installed are ignored, so a late listener call cannot roll back; once
  closed, nothing installs anything again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from time import perf_counter
from types import MappingProxyType

from zklb._pool_picks import PoolPicks
from zklb._pool_state import DEFAULT_HEALTH, State
from zklb.health import PoolStats
from zklb.instance import ServiceInstance
from zklb.lease import CountedLease, Lease, current_lease
from zklb.membership import Membership
from zklb.stats import InstanceStats, StatsRecorder
from zklb.strategies import HashKey, Strategy, create_strategy

__all__ = ["DEFAULT_HEALTH", "Pool", "State"]


class Pool(PoolPicks):
    """Picking over one service's instances with a strategy, passive health and in-flight accounting.

    Pure: no I/O, no threads. `LoadBalancer` subclasses it to feed it from ZooKeeper.
    """

    __slots__ = ()

    # -- the hot path ----------------------------------------------------------------------------

    def get_server(self, key: HashKey | None = None) -> ServiceInstance:
        """The next server by the current strategy, skipping ejected and draining ones.

        Lock-free and without I/O: one reference read and the strategy's pick (O(1) for the built-ins).
        ``key`` (str, bytes or int) is for ``consistent_hash``, which maps equal keys to the same
        server; other strategies ignore it. Raises `NoServerAvailable` when the pool is empty,
        `ClosedError` once closed.
        """
        if key is None:
            return self._pick()
        keyed = self._keyed
        if keyed is not None:
            return keyed(key) or self._pick_by_key(key, ())  # (never None: nothing is skipped)
        return self._pick_by_key(key, ())

    def acquire(
        self,
        exclude: Collection[str | ServiceInstance] = (),
        key: HashKey | None = None,
        *,
        tls: bool = False,
    ) -> Lease:
        """Pick a server and count a request on it until the returned `Lease` is released.

        Use as ``with lb.acquire() as server:``. ``exclude`` (instances or ids) skips servers already
        tried, as retries do; `NoServerAvailable` if nothing is left. ``key`` as for `get_server`.
        ``tls``: only an instance with a TLS port (``server.ssl_port``), for a request that must not
        travel in plain text; `NoServerAvailable` saying so if none has one.
        No I/O, no lock: counts with lock-free counters (a picker that tracks load: owned meanwhile).
        """
        if tls and not self._tls_all:
            return self._acquire_tls(exclude, key)
        if exclude or key is not None or not self._fast:  # _fast is False while releases are queued
            return self._acquire_slow(exclude, key)
        if self._lock_free:
            server = self._pick()
            try:
                slot = self._slots[server.id]
            except KeyError:  # picked from a picker just replaced, and gone from the pool since
                slot = StatsRecorder()
            next(slot.started)
            lease = _new(Lease)
        else:
            # A load-tracking picker: take ownership of its counts (no lock; see the module docstring).
            owner = self._owner
            try:
                owner.pop()
            except IndexError:  # another thread owns them: the locked path waits its turn
                return self._acquire_slow(exclude, key)
            counting = self._counting  # re-read as the owner: the picker may have been replaced
            if counting is not None:
                picker, counters = counting
                try:
                    # LeastConnectionsPicker.acquire_pick(), written out: a call frame is a tenth of
                    # this path. The instance's index goes with the lease, for its end (lease.py).
                    pos = picker._pos
                    i = picker._ring[pos]
                    pos += 1
                    picker._pos = pos
                    picker._keys[i] += picker._up[i]
                    if pos >= picker._stop:
                        picker._after_take()
                    slot = counters[i]
                    next(slot.started)
                finally:
                    owner.append(True)
                server = picker._instances[i]
                counted = _new(CountedLease)
                counted._counting = counting
                counted._index = i
                lease = counted
            else:
                try:
                    take = self._acquire_pick
                    if take is not None:
                        server = take()  # pick and count (another load-tracking picker)
                        try:
                            slot = self._slots[server.id]
                        except KeyError:  # as above
                            slot = StatsRecorder()
                        next(slot.started)
                finally:
                    owner.append(True)
                if take is None:  # replaced by one that does not track load: the general path, not
                    return self._acquire_slow(exclude, key)  # owning (its pick function may need it)
                lease = _new(Lease)
        # Lease(self, server, slot, perf_counter()), written out: the call is a tenth of this path.
        lease.server = server
        lease._pool = self
        lease._slot = slot
        lease._success = None
        lease._token = None
        lease._started = perf_counter()
        return lease

    def has_server(self, exclude: Collection[str | ServiceInstance] = (), *, tls: bool = False) -> bool:
        """Whether ``acquire(exclude=exclude, tls=tls)`` would find a server now (no I/O, never starts
        anything).

        Ejected and draining instances count: a pick falls back to them rather than to nothing.
        """
        members: Collection[str] = self._tls_ids if tls else self._membership.by_id
        if self._picker is None or not members or self._is_closed():
            return False
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        return any(key not in ids for key in members) if ids else True

    def report(self, server: ServiceInstance, *, success: bool, latency: float | None = None) -> None:
        """Record an outcome for ``server`` (it feeds passive health like a lease's outcome does).

        Inside ``with lb.acquire() as server:`` this sets that lease's outcome (recorded on exit, once);
        elsewhere (e.g. for a server from ``get_server()``) it is recorded now.
        """
        lease = current_lease.get()
        if lease is not None and lease._pool is self and lease.server.id == server.id:
            lease.report(success)
            return
        slot = self._slots.get(server.id)
        if slot is not None:  # else not (or no longer) in the pool: nothing to record
            self._release((server, slot, success, latency, False, True))

    # -- membership and state --------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The snapshot the balancer is picking from."""
        return self._membership

    def stats(self) -> Mapping[str, InstanceStats]:
        """Request statistics and health per instance id, for the instances in the pool.

        O(n), but holds the pool's lock only to take a few references: requests go on meanwhile.
        """
        self._expire_due()
        if self._deferred:
            self._drain()
        health = self._health
        with self._lock:  # a consistent set of references; health's tables are copy-on-write
            members = self._membership
            slots = self._slots
            ejected = _NO_EJECTIONS if health is None else health.ejected
            times = _NO_TIMES if health is None else health.times
        result = {key: slots[key].snapshot(ejected.get(key), times.get(key, 0)) for key in members.by_id}
        return MappingProxyType(result)

    def pool_stats(self) -> PoolStats:
        """Size, health and connection of the pool now (a frozen `PoolStats`); O(1) under the lock."""
        self._expire_due()
        health = self._health
        with self._lock:
            members = self._membership
            ejected = _NO_EJECTIONS if health is None else health.ejected
            draining = self._draining
            panic = self._panic
        return PoolStats(
            size=len(members),
            healthy=sum(1 for key in members.by_id if key not in draining and key not in ejected),
            ejected=len(ejected),
            draining=len(draining),
            panic=panic,
            version=members.version,
            connection=self._connection(),
        )

    def wait_for(self, predicate: Callable[[Membership], bool], timeout: float) -> bool:
        """Block until the pool the balancer picks from satisfies ``predicate``; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._installed:
            while not predicate(self._membership):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._installed.wait(remaining)
            return True

    @property
    def strategy(self) -> Strategy:
        """The strategy in use."""
        return self._strategy

    def set_strategy(self, strategy: str | Strategy) -> None:
        """Switch strategy (a name such as ``"weighted_round_robin"`` or a `Strategy`); takes effect at once.

        Unknown names raise `UnknownStrategy` listing the valid ones. In-flight counts are kept (a
        switch to a load-tracking strategy waits a few milliseconds to count them exactly).
        """
        new = create_strategy(strategy)
        with self._update_lock:
            was_lock_free = self._lock_free
            self._strategy = new
            self._install_locked(self._membership, force=True)
            if was_lock_free and not self._lock_free and self._picker is not None:
                # Requests on their way through the lock-free path when the seed read the counters
                # (past the check, not yet counted) may have been counted wrong by one each. They
                # need only to be scheduled once to finish that step: seed again after a moment.
                time.sleep(_SWITCH_GRACE)
                self._install_locked(self._membership, force=True)

    def _pick_by_key(self, key: HashKey, exclude: Collection[str]) -> ServiceInstance:
        """``get_server(key=...)``: the key's owner by a keyed strategy, past skipped instances."""
        if self._state is not State.STARTED:
            self._ensure_started()
        picker = self._picker
        pick_key = getattr(picker, "pick_key", None)
        if pick_key is None:
            return self._pick()  # not a keyed strategy (or no picker): the key is ignored
        if self._skipped:
            self._expire_due()
        server: ServiceInstance | None = pick_key(key, self._skipped)
        if server is None:
            server = pick_key(key, ())  # everything skipped: better the owner than nothing
        assert server is not None
        return server


_new = object.__new__
#: Seconds `Pool.set_strategy` lets requests already past the lock-free path's check finish that step.
_SWITCH_GRACE = 0.02

_NO_EJECTIONS: Mapping[str, float] = MappingProxyType({})
_NO_TIMES: Mapping[str, int] = MappingProxyType({})
