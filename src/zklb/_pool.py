"""`Pool`: one service's instances in memory, a strategy, passive health, and the hot path.

The part of a `LoadBalancer` that does no I/O and knows nothing of ZooKeeper: the balancer feeds it
membership snapshots (``_install``) and its callers' outcomes (through leases). ``LoadBalancer.static``
is a pool and nothing more.

Rules of this module:

- The hot path (``get_server()``) reads one reference, the current pick function, and calls it: no
  lock, no I/O. ``acquire()`` and a lease's release count on the instance's `StatsRecorder` with
  lock-free counters, and record a success there without a lock too. Only a picker that tracks load
  (least connections) makes them take the short lock, around its own update; so do failures and
  successes that end a probation or a run of failures (health decisions are serialised).
- Nothing holds the short lock for more than O(1) but a rebuild's swap: ``stats()`` and
  ``pool_stats()`` take references under it (health's tables are copy-on-write) and build outside.
- A membership change or a strategy change builds the new picker and counters off to the side (under
  ``_update_lock``, which the hot path never takes), then swaps them in under the short lock. The
  counters of instances that stay are the same objects, so in-flight counts survive the change.
- Ejected and draining instances are *skipped*, not removed: the picker is not rebuilt when one is
  ejected. While nothing is ejected or skipped the pick function is the picker's own ``pick`` (no
  cost); otherwise a wrapper that re-picks past skipped ones and brings ejected ones back on time.
- A release never waits for the lock (it may run from a finaliser inside a locked section of its own
  thread): one that finds it held is queued and applied by the next holder, before any count is read.
- ``acquire(tls=True)`` (an ``https://`` request) picks only among instances with a TLS port: when
  every instance has one it is the ordinary path; in a mixed pool a second picker over just those
  instances is built with each membership (off the hot path), and a load-tracking one is told of every
  request to its instances, whoever picked them, so both pickers see the same load. No scan per pick.
- Snapshots older than the one installed are ignored, so a late listener call cannot roll back; once
  closed, nothing installs anything again.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from time import perf_counter
from types import MappingProxyType

from zklb.errors import ClosedError, NoServerAvailable
from zklb.health import Connection, HealthPolicy, OutlierDetector, PoolStats
from zklb.instance import ServiceInstance
from zklb.lease import Lease, current_lease
from zklb.membership import Membership
from zklb.selection import InstanceFilter, Selection
from zklb.slow_start import Ramp, SlowStart
from zklb.stats import EWMA_ALPHA, InstanceStats, StatsRecorder
from zklb.strategies import HashKey, Picker, Strategy, create_strategy

__all__ = ["DEFAULT_HEALTH", "Pool", "State"]

log = logging.getLogger("zklb.balancer")

#: An ejection's log line, and the panic notice if that ejection started panic mode.
_Ejection = tuple[str, str | None]

#: Picks tried before a skip-aware scan, while some instances are ejected or draining.
_REPICKS = 4
#: Draws at most per pick while thinning for slow start (each keeps >= min_weight_percent of its chance).
_RAMP_DRAWS = 32
#: The passive health a balancer has unless told otherwise.
DEFAULT_HEALTH = HealthPolicy()


class State(enum.Enum):
    """Where a pool (or balancer) is in its life: new, started (picking), closed (for good)."""

    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


class Pool:
    """Picking over one service's instances with a strategy, passive health and in-flight accounting.

    Pure: no I/O, no threads. `LoadBalancer` subclasses it to feed it from ZooKeeper.
    """

    # Slots: the hot path reads a dozen of these per request, and a plain instance dict of more than
    # 30 keys (the balancer has more) loses CPython's fast attribute access (measured: +10-15 % per
    # acquire+release).
    __slots__ = (
        "__weakref__",
        "_acquire_pick",
        "_clock",
        "_deferred",
        "_departed",
        "_draining",
        "_draining_now",
        "_fast",
        "_fast_ok",
        "_health",
        "_installed",
        "_keyed",
        "_lock",
        "_lock_free",
        "_membership",
        "_panic",
        "_phantom",
        "_pick",
        "_pick_base",
        "_picker",
        "_preferred",
        "_preferred_ids",
        "_ramp",
        "_selection",
        "_skipped",
        "_slots",
        "_state",
        "_strategy",
        "_tls_all",
        "_tls_ids",
        "_tls_mirror",
        "_tls_picker",
        "_update_lock",
        "_whole",
        "root",
        "service",
    )

    def __init__(
        self,
        service: str,
        root: str,
        strategy: str | Strategy,
        health: HealthPolicy | None,
        clock: Callable[[], float],
        *,
        slow_start: SlowStart | None = None,
        filter: InstanceFilter | None = None,
        prefer: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        self.root = root
        self._strategy = create_strategy(strategy)
        if health is not None and not isinstance(health, HealthPolicy):
            raise TypeError(f"health must be a HealthPolicy or None, got {type(health).__name__}")
        if slow_start is not None and not isinstance(slow_start, SlowStart):
            raise TypeError(f"slow_start must be a SlowStart or None, got {type(slow_start).__name__}")
        self._clock = clock
        self._selection = Selection(filter, prefer)
        self._ramp = None if slow_start is None else Ramp(slow_start)
        # With prefer=: the pickers of the whole pool and of the preferred instances (_picker is one).
        self._whole: Picker | None = None
        self._preferred: Picker | None = None
        self._preferred_ids: frozenset[str] = frozenset()
        self._state = State.NEW
        # Serialises rebuilds (membership or strategy changes); the hot path never takes it.
        self._update_lock = threading.Lock()
        # Guards a load-tracking picker's updates, health and the swap; held for O(1) (a few hundred
        # nanoseconds) except by the swap of a rebuild.
        self._lock = threading.Lock()
        self._membership = Membership(service=self.service, version=0)
        # Notified after each swap, for wait_for(); never taken on the hot path.
        self._installed = threading.Condition(threading.Lock())
        self._picker: Picker | None = None
        # A load-tracking picker's pick-and-count (run under the lock), or None: counting is lock-free.
        self._acquire_pick: Callable[[], ServiceInstance] | None = None
        self._lock_free = True  # no load-tracking picker: a lease's success needs no lock (lease.py)
        # The counters of each instance in the membership (swapped with it), and of instances that left
        # with requests in flight (so that one coming back has its count).
        self._slots: dict[str, StatsRecorder] = {}
        self._departed: dict[str, StatsRecorder] = {}
        # Releases that could not take the lock (see _release), applied by the next one to hold it.
        self._deferred: deque[_Release] = deque()
        self._draining_now = False
        self._health = None if health is None else OutlierDetector(health, clock)
        self._draining: frozenset[str] = frozenset()
        # Requests a load-tracking picker counts on skipped instances that were never sent (see _take).
        self._phantom: dict[str, int] = {}
        self._skipped: frozenset[str] = frozenset()  # ejected (unless in panic) or draining
        self._panic = False
        # True while acquire() may take its fast path: started, nothing skipped, no release queued;
        # _fast_ok is the same but for the queue.
        self._fast = False
        self._fast_ok = False
        # Picking for https requests: the picker over the instances with a TLS port (the main picker
        # when all have one, None when none has), their ids, and the picker that must be told of
        # every request to them (a load-tracking one of a mixed pool; else None).
        self._tls_picker: Picker | None = None
        self._tls_ids: frozenset[str] = frozenset()
        self._tls_all = False
        self._tls_mirror: Picker | None = None
        self._pick: Callable[[], ServiceInstance] = self._empty
        self._pick_base: Callable[[], ServiceInstance] = self._empty  # what _pick_ramping thins
        # A keyed picker's pick_key while nothing is skipped (get_server(key=)'s fast path), else None.
        self._keyed: Callable[[HashKey], ServiceInstance | None] | None = None

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
        No I/O; counts with lock-free counters (a picker that tracks load: one short lock).
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
        else:
            lock = self._lock
            # acquire()/release() rather than ``with``: half the cost, and this runs on every request.
            lock.acquire()
            try:
                take = self._acquire_pick  # re-read under the lock: the picker may have been replaced
                server = take() if take is not None else self._pick()  # pick and count (least conn.)
                slot = self._slots.get(server.id) or StatsRecorder()
                next(slot.started)
            finally:
                lock.release()
        # Lease(self, server, slot, perf_counter()), written out: the call is a tenth of this path.
        lease = _new(Lease)
        lease.server = server
        lease._pool = self
        lease._slot = slot
        lease._success = None
        lease._token = None
        lease._started = perf_counter()
        return lease

    def _acquire_slow(
        self, exclude: Collection[str | ServiceInstance], hash_key: HashKey | None = None
    ) -> Lease:
        ids = self._before_slow_pick(exclude)
        notices: list[_Ejection] = []
        with self._lock:
            self._apply_deferred_locked(notices)
            picker = self._picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            skipped = self._skipped
            avoid = skipped | ids if ids else skipped
            fused = self._acquire_pick
            pick_key = None if hash_key is None else getattr(picker, "pick_key", None)
            ramp = self._ramp  # slow start thins picks, keyed ones excepted: a key sticks to its owner
            ramping = ramp is not None and bool(ramp.ramping) and pick_key is None
            if pick_key is not None:
                # The key's owner, else its next choice past what is skipped or tried: then past tried only.
                server = pick_key(hash_key, avoid)
                if server is None and skipped:
                    server = pick_key(hash_key, ids)
            elif fused is not None and avoid and not ramping:
                server = self._take_locked(fused, picker, avoid)
            else:
                server = None
            if server is None:
                server = _choose(picker, avoid)
                if ramping and ramp is not None and server is not None:
                    now = self._clock()
                    if now >= ramp.next_at:
                        ramp.tick(now, len(self._membership))
                        if not ramp.ramping:
                            self._refresh_locked()  # the last ramp ended: the bare pick function again
                    server = _thin(ramp, server, lambda: _choose(picker, avoid))
                if server is None and skipped:
                    # Every instance not tried is ejected or draining: better one of them than no retry.
                    server = _choose(picker, ids)
                if server is None:
                    reason = f"all {len(self._membership)} instances excluded"
                    raise NoServerAvailable(self.service, self.root, reason)
                if picker.tracks_load:
                    picker.acquired(server)
            mirror = self._tls_mirror
            if mirror is not None and server.id in self._tls_ids:
                mirror.acquired(server)
            slot = self._slots[server.id]
            next(slot.started)
        for notice in notices:
            _log_ejection(notice)
        return Lease(self, server, slot, perf_counter())

    def _acquire_tls(self, exclude: Collection[str | ServiceInstance], hash_key: HashKey | None) -> Lease:
        """`acquire` for a TLS-only request in a pool where not every instance has a TLS port."""
        ids = self._before_slow_pick(exclude)
        notices: list[_Ejection] = []
        with self._lock:
            self._apply_deferred_locked(notices)
            picker, tls = self._picker, self._tls_picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            if tls is None:
                reason = (
                    f"none of its {len(self._membership)} instances offers TLS, and an https:// request "
                    "is never sent in plain text"
                )
                raise NoServerAvailable(self.service, self.root, reason)
            skipped = self._skipped
            avoid = skipped | ids if ids else skipped
            pick_key = None if hash_key is None else getattr(tls, "pick_key", None)
            if pick_key is not None:
                server = pick_key(hash_key, avoid) or (pick_key(hash_key, ids) if skipped else None)
            else:
                server = _choose(tls, avoid)
                ramp = self._ramp
                if ramp is not None and ramp.ramping and server is not None:
                    server = _thin(ramp, server, lambda: _choose(tls, avoid))
                if server is None and skipped:
                    server = _choose(tls, ids)  # every TLS instance not tried is skipped: better one of them
            if server is None:
                reason = f"all {len(self._tls_ids)} instances that offer TLS excluded"
                raise NoServerAvailable(self.service, self.root, reason)
            if picker.tracks_load:
                picker.acquired(server)
            if tls.tracks_load:
                tls.acquired(server)
            slot = self._slots[server.id]
            next(slot.started)
        for notice in notices:
            _log_ejection(notice)
        return Lease(self, server, slot, perf_counter())

    def _before_slow_pick(self, exclude: Collection[str | ServiceInstance]) -> set[str]:
        """What a pick off the fast path does first: start, end due ejections, apply queued releases.
        Returns the ids of ``exclude``."""
        if self._state is not State.STARTED:
            self._ensure_started()
        self._expire_due()
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        if self._deferred:
            self._drain()
        return ids

    def _apply_deferred_locked(self, notices: list[_Ejection]) -> None:
        """Apply releases queued meanwhile (a drain met the lock held) before a pick, under the lock."""
        deferred = self._deferred
        while deferred:
            notice = self._apply_locked(deferred.popleft())
            if notice:
                notices.append(notice)
        if not deferred:
            self._set_fast(self._fast_ok)

    def _take_locked(
        self, fused: Callable[[], ServiceInstance], picker: Picker, avoid: Collection[str]
    ) -> ServiceInstance | None:
        """A counted pick (``acquire_pick``) not in ``avoid``, or None after a few tries.

        A load-tracking picker hands out instances in its own fair order (re-picking with ``pick()``
        instead skewed it: one healthy instance of three got nothing). One the caller excluded is
        handed back at once (``released``). A skipped one keeps the request as a *phantom*, so the
        picker sees it loaded and stops offering it while others are as idle: an idle ejected instance
        otherwise stays the least loaded and every pick falls back to an O(n) scan. Phantoms are
        taken back when it is skipped no more (`_unload_locked`). O(1) amortised.
        """
        skipped = self._skipped
        for _ in range(_REPICKS):
            server = fused()
            key = server.id
            if key not in avoid:
                return server
            if key in skipped:
                self._phantom[key] = self._phantom.get(key, 0) + 1
            else:
                picker.released(server, True, 0.0)
        return None

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

        Unknown names raise `UnknownStrategy` listing the valid ones. In-flight counts are kept.
        """
        new = create_strategy(strategy)
        with self._update_lock:
            self._strategy = new
            self._install_locked(self._membership, force=True)

    # -- internals -------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        """Called by picks before the pool is started; a `LoadBalancer` starts itself here."""
        if self._is_closed():
            raise ClosedError(f"load balancer for {self.service!r} is closed")

    def _connection(self) -> Connection:
        return "static"

    def _is_ejected(self, key: str) -> bool:
        """Whether passive health has ejected instance ``key`` (for the retry loop's budget)."""
        health = self._health
        return health is not None and key in health.ejected

    def _is_closed(self) -> bool:
        return self._state is State.CLOSED

    def _empty(self) -> ServiceInstance:
        raise NoServerAvailable(self.service, self.root)

    def _closed(self) -> ServiceInstance:
        raise ClosedError(f"load balancer for {self.service!r} is closed")

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

    def _pick_skipping(self) -> ServiceInstance:
        """The pick function while some instances are ejected or draining: re-pick past them."""
        health = self._health
        if health is not None and health.next_return <= health.now():
            self._expire_due()
        picker = self._picker
        if picker is None:
            return self._pick()
        server = _choose(picker, self._skipped)
        return server if server is not None else picker.pick()

    def _expire_due(self) -> None:
        """Bring back instances whose ejection time is over (on probation)."""
        health = self._health
        if health is None or health.next_return > health.now():
            return
        with self._lock:
            back = health.expire()
            for key in back:
                slot = self._slots.get(key)
                if slot is not None:
                    slot.attention = True  # its next success ends the probation, under the lock
            if back and self._ramp is not None:  # back from ejection: ramps up again
                by_id = self._membership.by_id
                returned = [by_id[key] for key in back if key in by_id]
                self._ramp.restart(returned, self._clock(), len(by_id))
            notice = self._refresh_locked() if back else None
        for key in back:
            log.info("%s: instance %s back from ejection, on probation", self.service, key)
        if notice:
            log.warning("%s", notice)

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
        tracking = picker is not None and picker.tracks_load
        take = None
        if picker is not None and tracking:
            take = getattr(picker, "acquire_pick", None) or functools.partial(_pick_and_count, picker)
        with self._lock:
            if self._is_closed():  # re-read: close() may have run while the picker was built
                return
            self._whole, self._preferred = picker, preferred_picker
            self._preferred_ids = frozenset() if preferred is None else frozenset(preferred.by_id)
            if self._ramp is not None:
                self._ramp.follow(membership.instances, self._clock(), first)
            if tracking:
                assert picker is not None
                # Exact: a load-tracking picker's counts change only under this lock. O(n), the one
                # place the lock is held that long (a rebuild of a least-connections pool).
                picker.seed({key: slot.in_flight() for key, slot in slots.items()})
            mirror = tls_picker if tls_picker is not picker and tls_picker is not None else None
            if mirror is not None and mirror.tracks_load:
                mirror.seed({key: slot.in_flight() for key, slot in slots.items() if key in tls_ids})
            self._tls_picker, self._tls_ids, self._tls_all = tls_picker, tls_ids, tls_all
            self._tls_mirror = mirror if mirror is not None and mirror.tracks_load else None
            if self._health is not None:
                self._health.retain(membership.by_id)
            self._membership = membership
            self._picker = picker
            self._slots = slots
            self._departed = departed
            self._draining = draining
            self._acquire_pick = take
            self._lock_free = take is None
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
        old, gone = self._slots, self._departed
        keys = membership.by_id.keys()
        # Set operations and a dict copy run in C: one change among 10,000 costs well under a
        # millisecond here, where a Python loop over every instance cost several.
        slots = dict(old)
        left = old.keys() - keys
        for key in left:
            del slots[key]
        for key in keys - old.keys():
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

    def _refresh_locked(self) -> str | None:
        """Recompute what picks skip, panic, and the pick functions; a panic notice to log, if entered."""
        picker = self._picker
        started = self._state is State.STARTED
        self._keyed = None
        if self._state is State.CLOSED:
            self._fast_ok = self._fast = False
            self._pick = self._closed
            return None
        if self._preferred is not None:
            picker = self._prefer_locked()
        if picker is None:
            self._skipped, self._panic = frozenset(), False
            self._set_fast(started)
            if started:
                self._pick = self._empty
            return None
        draining = self._draining
        active = len(self._membership) - len(draining)
        ejected = frozenset() if self._health is None else frozenset(self._health.ejected) - draining
        panic = False
        if active == 0:
            skipped: frozenset[str] = frozenset()  # everything draining: better them than nothing
        else:
            health = self._health
            panic = health is not None and health.policy.panics(active, active - len(ejected))
            skipped = draining if panic else draining | ejected
        notice = None
        if panic and not self._panic:
            notice = (
                f"{self.service}: panic: only {active - len(ejected)} of {active} instances healthy; "
                "picking from the whole pool, ejected ones included"
            )
        self._skipped, self._panic = skipped, panic
        if self._phantom:
            self._unload_locked(picker, skipped)
        if not started:
            self._set_fast(False)
        elif skipped or ejected:
            # While anything is ejected (in panic too), picks go through the wrapper that notices when an
            # ejection ends, so that panic ends, and probation starts, on the request path itself.
            self._set_fast(False)
            self._pick = self._pick_skipping
        else:
            self._set_fast(True)
            self._pick = picker.pick
            self._keyed = getattr(picker, "pick_key", None)
        ramp = self._ramp
        if started and ramp is not None and ramp.ramping:
            # Slow start: the pick function above, thinned (see zklb.slow_start); acquire() goes slow too.
            self._set_fast(False)
            self._pick_base = self._pick
            self._pick = self._pick_ramping
        return notice

    def _prefer_locked(self) -> Picker | None:
        """With ``prefer=``: make the preferred instances' picker the one in use while one of them is
        healthy and not draining, the whole pool's otherwise; returns the one in use."""
        health = self._health
        ejected = () if health is None else health.ejected
        draining = self._draining
        live = any(key not in draining and key not in ejected for key in self._preferred_ids)
        want = self._preferred if live else self._whole
        if want is not None and want is not self._picker:
            take = None
            if want.tracks_load:
                # Its counts are stale: give it the real ones (phantoms belonged to the other picker).
                want.seed({key: slot.in_flight() for key, slot in self._slots.items()})
                take = getattr(want, "acquire_pick", None) or functools.partial(_pick_and_count, want)
            self._picker = want
            self._acquire_pick = take
            self._lock_free = take is None
            self._phantom = {}
        return self._picker

    def _pick_ramping(self) -> ServiceInstance:
        """The pick function while some instance is in slow start: the usual pick, thinned (inline:
        this runs on every pick while any instance ramps)."""
        ramp = self._ramp
        assert ramp is not None
        now = self._clock()
        if now >= ramp.next_at:
            with self._lock:  # the next step of the ramps; after the last, the bare pick function again
                if now >= ramp.next_at:
                    ramp.tick(now, len(self._membership))
                    self._refresh_locked()
            return self._pick()
        pick = self._pick_base
        server = pick()
        accept = ramp.accept
        chance = accept.get(server.id)
        if chance is None:
            return server
        draw = ramp.draw
        for _ in range(_RAMP_DRAWS):
            if draw() < chance:
                return server
            server = pick()
            chance = accept.get(server.id)
            if chance is None:
                return server
        return server

    def _set_fast(self, ok: bool) -> None:
        """Whether ``acquire()`` may take its fast path: only with nothing skipped and nothing queued,
        and no second (TLS) picker to keep in step."""
        ok = ok and self._tls_mirror is None
        self._fast_ok = ok
        self._fast = ok and not self._deferred

    # -- outcomes --------------------------------------------------------------------------------

    def _unload_locked(self, picker: Picker, skipped: frozenset[str]) -> None:
        """Take back the phantom requests of instances no longer skipped: they are picked again."""
        by_id = self._membership.by_id
        for key in [k for k in self._phantom if k not in skipped]:
            count = self._phantom.pop(key)
            instance = by_id.get(key)
            if instance is not None:
                for _ in range(count):
                    picker.released(instance, True, 0.0)

    def _finish(
        self, slot: StatsRecorder, server: ServiceInstance, success: bool, latency: float | None
    ) -> None:
        """End a lease (once). A success without news for health takes no lock, or, with a picker that
        tracks load, only a try of the lock around the picker's update (see `StatsRecorder`)."""
        if not success or latency is None or slot.attention:
            self._release((server, slot, success, latency, True, latency is not None))
            return
        if not self._lock_free:  # a load-tracking picker: its counts change under the lock
            lock = self._lock
            if not lock.acquire(False):
                self._release((server, slot, success, latency, True, True))  # queues it
                return
            try:
                next(slot.finished)
                picker = self._picker
                if picker is not None:  # (released() of a picker that does not track load is a no-op)
                    picker.released(server, True, latency)
                mirror = self._tls_mirror
                if mirror is not None and server.id in self._tls_ids:
                    mirror.released(server, True, latency)
            finally:
                lock.release()
            if self._deferred and not self._draining_now:
                self._drain()
        else:
            next(slot.finished)
        next(slot.requests)
        # StatsRecorder.add_latency, written out: a call frame is a tenth of this path's cost.
        slot.last_latency = latency
        ewma = slot.latency_ewma
        slot.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)

    def _release(self, item: _Release) -> None:
        """End one in-flight request (``counted``) and/or record its outcome (``record``), locked.

        ``item`` is ``(server, slot, success, latency, counted, record)``: the outcome ``success``,
        with ``latency`` if known, of a request to ``server``, whose counters are ``slot``.

        Never waits for the lock: a lease may be released from a finaliser, which can run in the middle
        of a locked section of this very thread (any allocation may start a GC pass). When the lock is
        held, the release is queued (a deque append is atomic) and ``acquire()`` leaves its fast path;
        the queue is applied (`_drain`) by the next release, ``acquire()`` or ``stats()``, before any
        of them reads a count.
        """
        lock = self._lock
        if not lock.acquire(False):
            self._deferred.append(item)
            self._fast = False
            return
        try:
            notice = self._apply_locked(item)
        finally:
            lock.release()
        if self._deferred and not self._draining_now:
            self._drain()
        if notice:
            _log_ejection(notice)

    def _apply_locked(self, item: _Release) -> _Ejection | None:
        """`_release`'s work, with the lock held; an ejection to log (after letting go), if any."""
        server, slot, success, latency, counted, record = item
        notice = None
        key = server.id
        picker = self._picker
        if counted:
            next(slot.finished)
            if picker is not None and picker.tracks_load:
                picker.released(server, success, latency or 0.0)
            mirror = self._tls_mirror
            if mirror is not None and key in self._tls_ids:
                mirror.released(server, success, latency or 0.0)
        if not record or self._slots.get(key) is not slot:
            return None  # nothing to record, or the instance left the pool while the request ran
        next(slot.requests)
        if success:
            slot.consecutive_failures = 0
            health = self._health
            if health is not None and key in health.probation:
                health.on_success(key)
            slot.attention = False
        else:
            slot.failures += 1
            slot.consecutive_failures += 1
            slot.attention = True
            health = self._health
            if health is not None:
                active = len(self._membership) - len(self._draining)
                if health.on_failure(key, slot.consecutive_failures, active):
                    notice = self._ejected_locked(key, slot.consecutive_failures)
        if latency is not None:
            slot.add_latency(latency)
        if not counted and latency is not None and picker is not None:
            observe = getattr(picker, "observe", None)  # a latency-aware picker (peak_ewma)
            if observe is not None:
                observe(server, latency)
        return notice

    def _drain(self) -> None:
        """Apply releases queued while the lock was held (see `_release`); called without the lock.

        Takes each queued release once through `_release`; one that meets the lock held again is queued
        again, for the next drain. Restores ``acquire()``'s fast path when the queue is empty.
        """
        deferred = self._deferred
        self._draining_now = True  # the releases below must not each start a drain of their own
        try:
            for _ in range(len(deferred)):
                try:
                    item = deferred.popleft()
                except IndexError:  # another thread drained it meanwhile
                    break
                self._release(item)
        finally:
            self._draining_now = False
        lock = self._lock
        if not deferred and lock.acquire(False):  # never waits: it may run from a finaliser's release
            try:
                self._set_fast(self._fast_ok)
            finally:
                lock.release()

    def _ejected_locked(self, key: str, failures: int) -> _Ejection:
        """What to log, once the lock is released: the ejection (INFO), and panic if it began (WARNING)."""
        assert self._health is not None
        panic = self._refresh_locked()
        until = self._health.ejected[key] - self._health.now()
        times = self._health.times_ejected(key)
        instance = self._membership.by_id.get(key)
        where = f" ({instance.url})" if instance is not None else ""
        ejection = (
            f"{self.service}: ejected instance {key}{where} for {until:.3g} s after {failures} failures "
            f"in a row (ejection {times})"
        )
        return ejection, panic


_new = object.__new__

# A queued release: `Pool._release`'s arguments.
_Release = tuple[ServiceInstance, StatsRecorder, bool, float | None, bool, bool]
_NO_EJECTIONS: Mapping[str, float] = MappingProxyType({})
_NO_TIMES: Mapping[str, int] = MappingProxyType({})


def _pick_and_count(picker: Picker) -> ServiceInstance:
    """``acquire_pick()`` for a load-tracking picker that does not offer it."""
    server = picker.pick()
    picker.acquired(server)
    return server


def _thin(
    ramp: Ramp, server: ServiceInstance, again: Callable[[], ServiceInstance | None]
) -> ServiceInstance:
    """``server``, or a pick drawn again, until the slow-start test admits one (a bounded number of draws).

    Every instance keeps at least ``min_weight_percent`` of its chance, so a few draws almost always
    suffice; after ``_RAMP_DRAWS`` the last draw stands rather than loop on.
    """
    for _ in range(_RAMP_DRAWS):
        if ramp.admits(server.id):
            return server
        drawn = again()
        if drawn is None:
            break
        server = drawn
    return server


def _log_ejection(notice: _Ejection) -> None:
    """An ejection is routine (INFO); the panic it may have started is not (WARNING)."""
    ejection, panic = notice
    log.info("%s", ejection)
    if panic:
        log.warning("%s", panic)


def _choose(picker: Picker, skipped: Collection[str]) -> ServiceInstance | None:
    """A pick not in ``skipped``: a few ordinary picks first (cheap, fair), then the picker's scan."""
    if not skipped:
        return picker.pick()
    for _ in range(_REPICKS):
        server = picker.pick()
        if server.id not in skipped:
            return server
    return picker.pick_excluding(skipped)
