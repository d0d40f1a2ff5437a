"""`PoolOutcomes`: ending requests and recording their outcomes, lock-free where it can be.

``acquire()`` and a lease's release count on the instance's `StatsRecorder` with lock-free counters, and
record a success there without a lock too. A picker that tracks load (least connections) is updated
by the owner of its counts (see `zklb._pool`), without the lock. Failures and successes that end a
probation or a run of failures take the lock (health decisions are serialised, and may eject an
instance), and the ownership too.

A release never waits for the lock or the ownership (it may run from a finaliser inside a locked
section of its own thread): one that finds either taken is queued and applied by the next holder,
before any count is read.
"""

from __future__ import annotations

import logging
from time import perf_counter

from zklb._pool_skips import PoolSkips
from zklb._pool_state import Release
from zklb.instance import ServiceInstance
from zklb.stats import EWMA_ALPHA, StatsRecorder

__all__ = ["Ejection", "PoolOutcomes", "log_ejection"]

log = logging.getLogger("zklb.balancer")

#: An ejection's log line, and the panic notice if that ejection started panic mode.
Ejection = tuple[str, str | None]


class PoolOutcomes(PoolSkips):
    """The end of each request: in-flight counts, statistics, passive health's verdicts."""

    __slots__ = ()

    def _finish(
        self, slot: StatsRecorder, server: ServiceInstance, success: bool, latency: float | None
    ) -> None:
        """End a lease (once). A success without news for health takes no lock; with a picker that
        tracks load, a try of the ownership of its counts around its update (see `zklb._pool`)."""
        if not success or latency is None or slot.attention:
            self._release((server, slot, success, latency, True, latency is not None))
            return
        if not self._lock_free:  # a load-tracking picker: its counts change only with their ownership
            owner = self._owner
            try:
                owner.pop()
            except IndexError:  # owned elsewhere (or further up this thread): never wait, queue it
                self._release((server, slot, success, latency, True, True))
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
                owner.append(True)
            if self._deferred and not self._draining_now:
                self._drain()
        else:
            next(slot.finished)  # (and one more request recorded: see StatsRecorder)
        # StatsRecorder.add_latency, written out: a call frame is a tenth of this path's cost.
        slot.last_latency = latency
        ewma = slot.latency_ewma
        slot.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)

    def _release(self, item: Release) -> None:
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
        owner = self._owner
        try:
            owner.pop()  # the picker's counts too (see PoolState._exclusive), without waiting either
        except IndexError:
            self._deferred.append(item)
            self._fast = False
            lock.release()
            return
        try:
            notice = self._apply_locked(item)
        finally:
            owner.append(True)
            lock.release()
        if self._deferred and not self._draining_now:
            self._drain()
        if notice:
            log_ejection(notice)

    def _apply_locked(self, item: Release) -> Ejection | None:
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
            if counted:  # ended, not recorded: nothing learnt, or the instance left while it ran
                slot.unrecorded += 1
            return None
        if not counted:
            slot.unrecorded -= 1  # an outcome reported outside a lease: a request no lease ended
        if (
            success
            and slot.consecutive_failures
            and latency is not None
            and (perf_counter() - latency < slot.streak_began)
        ):
            pass  # sent before these failures began: it says nothing of the server since (StatsRecorder)
        elif success:
            slot.consecutive_failures = 0
            health = self._health
            if health is not None and key in health.probation:
                health.on_success(key)
            slot.attention = False
        else:
            slot.failures += 1
            if not slot.consecutive_failures:
                slot.streak_began = perf_counter()
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

    def _ejected_locked(self, key: str, failures: int) -> Ejection:
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

    def _apply_deferred_locked(self, notices: list[Ejection]) -> None:
        """Apply releases queued meanwhile (a drain met the lock held) before a pick, under the lock."""
        deferred = self._deferred
        while deferred:
            notice = self._apply_locked(deferred.popleft())
            if notice:
                notices.append(notice)
        if not deferred:
            self._set_fast(self._fast_ok)


def log_ejection(notice: Ejection) -> None:
    """An ejection is routine (INFO); the panic it may have started is not (WARNING)."""
    ejection, panic = notice
    log.info("%s", ejection)
    if panic:
        log.warning("%s", panic)
