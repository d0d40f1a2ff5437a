"""`PoolState`: what a pool holds (its slots), its life cycle, and the few facts every part of it asks.

The base of the pool's layers, each a module read on its own, each importing only those below it:
`PoolState` (here) <- `PoolSkips` (``zklb._pool_skips``: what picks skip, panic, the pick function)
<- `PoolOutcomes` (``zklb._pool_outcomes``: ending requests and recording outcomes) <- `PoolInstall`
(``zklb._pool_install``: installing a membership) <- `PoolPicks` (``zklb._pool_picks``: picks off
the fast path) <- `Pool` (``zklb._pool``: the hot path and the public calls). Every attribute lives
in the one ``__slots__`` here, so the layers cost the hot path nothing: CPython resolves a slot or a
method by the object's type, however deep its bases.
The rules that bind them all are in `zklb._pool`'s docstring.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from zklb.errors import ClosedError, NoServerAvailable
from zklb.health import Connection, HealthPolicy, OutlierDetector
from zklb.instance import ServiceInstance
from zklb.lease import Counting
from zklb.membership import Membership
from zklb.selection import InstanceFilter, Selection
from zklb.slow_start import Ramp, SlowStart
from zklb.stats import StatsRecorder
from zklb.strategies import HashKey, Picker, Strategy, create_strategy

__all__ = ["DEFAULT_HEALTH", "PoolState", "Release", "State", "seed_load_trackers"]

log = logging.getLogger("zklb.balancer")

#: The passive health a balancer has unless told otherwise.
DEFAULT_HEALTH = HealthPolicy()

#: Seconds `PoolState._exclusive` waits at most for the hot path to give a picker's counts back.
_OWNER_WAIT = 10.0


def seed_load_trackers(slots: Mapping[str, StatsRecorder], pickers: Iterable[Picker | None]) -> None:
    """Seed each distinct load-tracking picker among ``pickers`` with the in-flight counts of ``slots``.

    The counts are read once for all of them (O(n)); a picker ignores the ids outside its snapshot.
    Run while owning the counts, so that no request starts or ends meanwhile.
    """
    trackers = {id(p): p for p in pickers if p is not None and p.tracks_load}
    if trackers:
        in_flight = {key: slot.in_flight() for key, slot in slots.items()}
        for picker in trackers.values():
            picker.seed(in_flight)


#: A request's end or outcome, as `PoolOutcomes._release` takes it (and queues it when it cannot lock):
#: ``(server, slot, success, latency, counted, record)``.
Release = tuple[ServiceInstance, StatsRecorder, bool, float | None, bool, bool]


class State(enum.Enum):
    """Where a pool (or balancer) is in its life: new, started (picking), closed (for good)."""

    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


class PoolState:
    """The state of a `Pool`, and the answers to "started?", "closed?", "nothing to pick" (see `Pool`)."""

    # Slots: the hot path reads a dozen of these per request, and a plain instance dict of more than
    # 30 keys (the balancer has more) loses CPython's fast attribute access (measured: +10-15 % per
    # acquire+release).
    __slots__ = (
        "__weakref__",
        "_acquire_pick",
        "_clock",
        "_counting",
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
        "_owner",
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
        # Ownership of a load-tracking picker's counts (and of the pool counters that go with them): a
        # one-item list, taken with pop() and given back with append(), two atomic C calls under the
        # GIL. The hot path takes it without the lock and never waits for it (see zklb._pool); a locked
        # section that changes those counts takes it too, after the lock (`_own`).
        self._owner: list[bool] = [True]
        # A load-tracking picker's pick-and-count (run by the owner), or None: counting is lock-free.
        self._acquire_pick: Callable[[], ServiceInstance] | None = None
        self._lock_free = True  # no load-tracking picker: a lease's success needs no lock (lease.py)
        # While the picker in use is a least-connections one and the only picker to tell: it and the
        # counters of its instances by its index, which acquire() and a CountedLease's end read as the
        # owner of the counts (zklb._pool, lease.py); else None. A new tuple whenever it changes.
        self._counting: Counting | None = None
        # The counters of each instance in the membership (swapped with it), and of instances that left
        # with requests in flight (so that one coming back has its count).
        self._slots: dict[str, StatsRecorder] = {}
        self._departed: dict[str, StatsRecorder] = {}
        # Releases that could not take the lock (see _release), applied by the next one to hold it.
        self._deferred: deque[Release] = deque()
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

    # -- ownership of a load-tracking picker's counts ------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The lock, and ownership of the picker's counts: for locked sections that change them.

        Waits for a hot-path owner to give the counts back: it holds them for a few hundred
        nanoseconds and waits for nothing, so a few yields of the GIL let it finish. Never used by what
        a finaliser can run (a release), which tries both and queues itself when either is taken.
        """
        with self._lock:
            owner = self._owner
            deadline = 0.0
            while True:
                try:
                    owner.pop()
                    break
                except IndexError:
                    # An owner holds the counts for microseconds and waits for nothing, so counts held
                    # this long were lost: an exception (e.g. KeyboardInterrupt from a signal handler)
                    # struck between taking them and the ``try`` that gives them back, maybe midway
                    # through an update. Take them over, rebuilt from the counters.
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + _OWNER_WAIT
                    elif now > deadline:
                        self._recover_lost_counts_locked()
                        break
                    time.sleep(0)
            try:
                yield
            finally:
                owner.append(True)

    def _recover_lost_counts_locked(self) -> None:
        """Reseed every load-tracking picker from the counters (the lock held, the counts ownerless)."""
        log.error(
            "%s: the picker's counts were not given back for %g s (an exception interrupted their "
            "owner); rebuilt from the request counters",
            self.service,
            _OWNER_WAIT,
        )
        seed_load_trackers(self._slots, (self._whole, self._preferred, self._picker, self._tls_mirror))

    # -- life cycle ------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        """Called by picks before the pool is started; a `LoadBalancer` starts itself here."""
        if self._is_closed():
            raise ClosedError(f"load balancer for {self.service!r} is closed")

    def _connection(self) -> Connection:
        return "static"

    def _is_closed(self) -> bool:
        return self._state is State.CLOSED

    def _empty(self) -> ServiceInstance:
        raise NoServerAvailable(self.service, self.root)

    def _closed(self) -> ServiceInstance:
        raise ClosedError(f"load balancer for {self.service!r} is closed")
