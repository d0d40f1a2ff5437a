"""`PoolSkips`: what picks skip (ejected and draining instances), panic, and the pick function.

Ejected and draining instances are *skipped*, not removed: the picker is not rebuilt when one is
ejected. While nothing is ejected or skipped the pick function is the picker's own ``pick`` (no cost);
otherwise a wrapper that re-picks past skipped ones and brings ejected ones back on time. While an
instance is in slow start: a pick function made once per step, the picker's own pick over ramped
weights if it offers ``ramped_pick``, else its picks thinned (see `zklb.slow_start`). With
``prefer=``, which picker is in use is decided here too. Everything named ``*_locked`` runs under the
pool's short lock.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from itertools import chain, islice, repeat, starmap
from operator import attrgetter

from zklb._pool_state import PoolState, State
from zklb.instance import ServiceInstance
from zklb.slow_start import Ramp
from zklb.strategies import Picker
from zklb.strategies.least_connections import LeastConnectionsPicker

__all__ = ["REPICKS", "PoolSkips", "choose", "pick_and_count", "thin", "thinning"]

log = logging.getLogger("zklb.balancer")

_ID = attrgetter("id")

#: Picks tried before a skip-aware scan, while some instances are ejected or draining.
REPICKS = 4
#: Draws at most per pick while thinning for slow start (each keeps >= min_weight_percent of its chance).
_RAMP_DRAWS = 32
#: Most picks between two looks at the clock while a ramped pick function is in use (fewer when picks
#: are rare: about four looks per step of the ramp at the rate seen).
_RAMP_LOOK_EVERY = 1024


class PoolSkips(PoolState):
    """The pick function of a pool, from what passive health, draining and slow start say now."""

    __slots__ = ()

    def _is_ejected(self, key: str) -> bool:
        """Whether passive health has ejected instance ``key`` (for the retry loop's budget)."""
        health = self._health
        return health is not None and key in health.ejected

    def _pick_skipping(self) -> ServiceInstance:
        """The pick function while some instances are ejected or draining: re-pick past them."""
        health = self._health
        if health is not None and health.next_return <= health.now():
            self._expire_due()
        picker = self._picker
        if picker is None:
            return self._pick()
        server = choose(picker, self._skipped)
        return server if server is not None else picker.pick()

    def _expire_due(self) -> None:
        """Bring back instances whose ejection time is over (on probation)."""
        health = self._health
        if health is None or health.next_return > health.now():
            return
        with self._exclusive():  # (a refresh may hand phantom requests back to the picker)
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

    def _refresh_locked(self) -> str | None:
        """Recompute what picks skip, panic, and the pick functions; a panic notice to log, if entered."""
        picker = self._picker
        started = self._state is State.STARTED
        self._keyed = None
        ramp = self._ramp
        if ramp is not None:
            ramp.token = None  # whatever ramped pick function was in use, it is not from now on
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
            if started and ramp is not None and ramp.ramping:
                # Slow start, a pick function per step: the picker over ramped weights if it offers
                # ramped_pick, else its picks thinned (nothing to thin while all ramp at one pace).
                if picker.tracks_load:
                    self._set_fast(False)  # acquire() counts through the slow path, which thins
                self._pick = self._ramped_locked(ramp, picker)
                return notice
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
            if want.tracks_load:
                # Its counts are stale: give it the real ones (phantoms belonged to the other picker).
                want.seed({key: slot.in_flight() for key, slot in self._slots.items()})
            self._picker = want
            self._count_on_locked(want)
            self._phantom = {}
        return self._picker

    def _count_on_locked(self, picker: Picker | None) -> None:
        """How ``acquire()`` and a lease's end count requests on ``picker``, the one now in use (with
        ``_slots`` and ``_tls_mirror`` already set): lock-free if it does not track load; else by its
        pick-and-count as the owner of its counts; a least-connections one, written out (``_counting``).
        O(n) for the latter (a C-level pass), as its seeding is."""
        take = None
        if picker is not None and picker.tracks_load:
            take = getattr(picker, "acquire_pick", None) or functools.partial(pick_and_count, picker)
        self._acquire_pick = take
        self._lock_free = take is None
        self._counting = None
        if type(picker) is LeastConnectionsPicker and self._tls_mirror is None:
            # (not its scaled variant, whose fast paths differ; a TLS mirror needs telling too)
            counters = list(map(self._slots.__getitem__, map(_ID, picker._instances)))
            self._counting = (picker, counters)

    def _step_ramp_locked(self, ramp: Ramp) -> None:
        """Move the slow-start ramps on if a step is due (lock held): every path that thins picks does,
        or ramps followed only by that path would stay at their first factor. After the last step, the
        bare pick function again."""
        now = self._clock()
        if now >= ramp.next_at:
            ramp.tick(now, len(self._membership))
            if not ramp.ramping:
                self._refresh_locked()

    def _ramped_locked(self, ramp: Ramp, picker: Picker) -> Callable[[], ServiceInstance]:
        """The pick function while instances ramp, for a picker that offers ``ramped_pick``: the ramped
        picker's pick, and after a stretch of picks one call of `_ramp_due` (one C-level chain: a pick
        costs what the ramped picker's own does). The first stretch is empty when the ramped picker of
        this step is still to be built: the next pick builds it, off the lock."""
        current = ramp.ramped_for is picker and ramp.ramped_step == ramp.steps and ramp.ramped is not None
        pick = ramp.ramped if current and ramp.ramped is not None else picker.pick
        stretch = 0
        now = self._clock()
        if current and ramp.armed_picks:
            # About four looks per step at the rate the last stretch went (all at once on a clock that
            # stands still, as in tests: the most then).
            elapsed = now - ramp.armed_at
            rate = ramp.armed_picks / elapsed if elapsed > 0 else math.inf
            stretch = int(max(1.0, min(_RAMP_LOOK_EVERY, rate * ramp.step_length / 4)))
        elif current:
            stretch = 64
        token = object()
        ramp.token, ramp.armed_at, ramp.armed_picks = token, now, stretch
        # A pick function that is an iterator's __next__ (itertools.cycle) is chained directly.
        source = getattr(pick, "__self__", None)
        picks = (
            source if getattr(pick, "__name__", "") == "__next__" and isinstance(source, Iterator) else None
        )
        if picks is None:
            picks = starmap(pick, repeat(()))
        due = starmap(self._ramp_due, repeat((token, picks)))  # (picks: kept alive while in use)
        return chain(islice(picks, stretch), due).__next__

    def _ramp_due(self, token: object, _picks: object) -> ServiceInstance:
        """End of a stretch of ramped picks: take the ramp's step if due, build the ramped picker for
        it if not done yet (off the lock: one pick per step pays it), arm the next stretch. Picks are
        made with no lock held (a pick function may take the lock itself)."""
        ramp = self._ramp
        assert ramp is not None
        if not ramp.building.acquire(blocking=False):
            return self._thinned(ramp)  # another pick is at it: thinning meanwhile
        try:
            with self._exclusive():  # (a refresh may hand phantom requests back to the picker)
                picker = self._picker
                build = False
                if token is ramp.token and picker is not None:  # else replaced meanwhile
                    now = self._clock()
                    if now >= ramp.next_at:
                        ramp.tick(now, len(self._membership))
                    if not ramp.ramping:
                        self._refresh_locked()  # the last ramp is over: the bare pick function again
                    elif ramp.ramped_for is picker and ramp.ramped_step == ramp.steps:
                        self._pick = self._ramped_locked(ramp, picker)
                    else:
                        build = True
                steps, factors = ramp.steps, ramp.accept
            if build:
                assert picker is not None
                offer = None if picker.tracks_load else getattr(picker, "ramped_pick", None)
                ramped: Callable[[], ServiceInstance] = (
                    offer(factors) if offer is not None else thinning(picker.pick, factors, ramp.draw)
                )
                with self._lock:
                    if token is ramp.token and ramp.steps == steps and self._picker is picker:
                        ramp.ramped, ramp.ramped_for, ramp.ramped_step = ramped, picker, steps
                        ramp.armed_picks = 0
                        self._pick = self._ramped_locked(ramp, picker)
                    else:
                        build = False  # the step or the picker changed while it was built
        finally:
            ramp.building.release()
        if build or token is not ramp.token:
            return self._pick()
        return self._thinned(ramp)

    def _thinned(self, ramp: Ramp) -> ServiceInstance:
        """A pick of the picker in use, thinned by the ramp's current step."""
        picker = self._picker
        if picker is None:
            return self._pick()
        return thin(ramp, picker.pick(), picker.pick)

    def _pick_ramping(self) -> ServiceInstance:
        """The pick function while some instance is in slow start and some are skipped: the usual pick
        (past skipped ones), thinned, with a look at the clock each time (ejections are rare)."""
        ramp = self._ramp
        assert ramp is not None
        now = self._clock()
        if now >= ramp.next_at:
            with self._exclusive():  # the next step of the ramps; after the last, the bare pick function
                if now >= ramp.next_at:
                    ramp.tick(now, len(self._membership))
                    self._refresh_locked()
            return self._pick()
        pick = self._pick_base
        return thin(ramp, pick(), pick)

    def _set_fast(self, ok: bool) -> None:
        """Whether ``acquire()`` may take its fast path: only with nothing skipped and nothing queued,
        and no second (TLS) picker to keep in step."""
        ok = ok and self._tls_mirror is None
        self._fast_ok = ok
        self._fast = ok and not self._deferred

    def _unload_locked(self, picker: Picker, skipped: frozenset[str]) -> None:
        """Take back the phantom requests of instances no longer skipped: they are picked again."""
        by_id = self._membership.by_id
        for key in [k for k in self._phantom if k not in skipped]:
            count = self._phantom.pop(key)
            instance = by_id.get(key)
            if instance is not None:
                for _ in range(count):
                    picker.released(instance, True, 0.0)


def pick_and_count(picker: Picker) -> ServiceInstance:
    """``acquire_pick()`` for a load-tracking picker that does not offer it."""
    server = picker.pick()
    picker.acquired(server)
    return server


def thin(ramp: Ramp, server: ServiceInstance, again: Callable[[], ServiceInstance | None]) -> ServiceInstance:
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


def thinning(
    pick: Callable[[], ServiceInstance], accept: Mapping[str, float], draw: Callable[[], float]
) -> Callable[[], ServiceInstance]:
    """``pick`` thinned by one step's chances ``accept`` (`thin`, without a look at the clock); ``pick``
    itself when nothing is thinned (every ramp at the same pace)."""
    if not accept:
        return pick
    chance_of = accept.get

    def thinned() -> ServiceInstance:
        server = pick()
        chance = chance_of(server.id)
        if chance is None:
            return server
        for _ in range(_RAMP_DRAWS):
            if draw() < chance:
                return server
            server = pick()
            chance = chance_of(server.id)
            if chance is None:
                return server
        return server

    return thinned


def choose(picker: Picker, skipped: Collection[str]) -> ServiceInstance | None:
    """A pick not in ``skipped``: a few ordinary picks first (cheap, fair), then the picker's scan."""
    if not skipped:
        return picker.pick()
    for _ in range(REPICKS):
        server = picker.pick()
        if server.id not in skipped:
            return server
    return picker.pick_excluding(skipped)
