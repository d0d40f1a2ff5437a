"""`Lease`: one in-flight request on one instance, from ``lb.acquire()`` until it is released."""

from __future__ import annotations

from collections.abc import Sized
from contextvars import ContextVar, Token
from time import perf_counter
from types import TracebackType
from typing import Protocol

from zklb.instance import ServiceInstance
from zklb.stats import EWMA_ALPHA, StatsRecorder
from zklb.strategies.least_connections import LeastConnectionsPicker

__all__ = ["CountedLease", "Counting", "Lease", "current_lease"]


class _Pool(Protocol):
    """What a lease needs of its pool: the call that ends a request, and whether a success may skip it.

    ``_lock_free`` is True while an ordinary success (its counters' ``attention`` unset) is recorded
    by counting and averaging on the counters alone: the pool has no load-tracking picker to tell.
    ``_counting`` is what a `CountedLease` ends on, as the owner of the counts (``_owner``, see
    ``zklb._pool``); the rest goes through ``_finish``.
    """

    _lock_free: bool
    _counting: Counting | None
    _owner: list[bool]
    _draining_now: bool

    @property
    def _deferred(self) -> Sized: ...  # releases queued meanwhile (_drain applies them)

    def _drain(self) -> object: ...

    def _finish(
        self, slot: StatsRecorder, server: ServiceInstance, success: bool, latency: float | None
    ) -> object: ...


#: The least-connections picker in use and the counters of its instances, by the picker's index: set
#: by the pool whenever it changes (a new tuple each time, so a lease can tell it is still the same).
Counting = tuple[LeastConnectionsPicker, list[StatsRecorder]]


# The innermost lease entered in this thread or task, so that ``lb.report()`` can mark it.
current_lease: ContextVar[Lease | None] = ContextVar("zklb_current_lease", default=None)
_enter = current_lease.set  # bound once: both run on every request
_leave = current_lease.reset


class Lease:
    """One in-flight request on one instance, from ``acquire()`` until release.

    ``with lb.acquire() as server:`` (or ``async with``) releases on leaving the block: an exception in
    the block counts as a failure (and propagates), otherwise a success unless ``report(False)`` said so.
    Cancellation and interrupts (exceptions that are not ``Exception``) record no outcome. Outside a
    ``with`` block, call ``release()`` or ``cancel()`` yourself. Releasing twice does nothing.
    """

    # Kept lean on purpose: one is made per request, and every attribute set is on the hot path.
    __slots__ = ("_pool", "_slot", "_started", "_success", "_token", "server")

    def __init__(self, pool: _Pool, server: ServiceInstance, slot: StatsRecorder, started: float) -> None:
        self.server = server
        self._pool: _Pool | None = pool  # None once released
        self._slot = slot  # the pool's counters of this instance, counted as started already
        self._started = started
        self._success: bool | None = None
        self._token: Token[Lease | None] | None = None

    @property
    def released(self) -> bool:
        """True once the lease has been released."""
        return self._pool is None

    def report(self, success: bool) -> None:
        """Set the outcome to record on release (e.g. ``False`` for a 5xx that raised nothing)."""
        self._success = success

    def release(self, success: bool | None = None) -> None:
        """End the request: its in-flight count goes down and its outcome and latency are recorded."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        if success is None:
            success = self._success is not False
        pool._finish(self._slot, self.server, success, perf_counter() - self._started)

    def cancel(self) -> None:
        """End the request without recording an outcome (it was abandoned: cancelled, interrupted)."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        pool._finish(self._slot, self.server, True, None)

    def __enter__(self) -> ServiceInstance:
        self._token = _enter(self)
        return self.server

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                _leave(token)
            except ValueError:  # exited in another context than entered (e.g. a moved generator)
                pass
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        if exc_type is None:
            latency = perf_counter() - self._started
            slot = self._slot
            if self._success is None and pool._lock_free and not slot.attention:
                # The common case, which the pool would do the same way, without a call: counted and
                # averaged on the lock-free counters (see StatsRecorder).
                next(slot.finished)  # (and one more request recorded: see StatsRecorder)
                slot.last_latency = latency
                ewma = slot.latency_ewma
                slot.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)
                return
            pool._finish(slot, self.server, self._success is not False, latency)
        elif issubclass(exc_type, Exception):
            pool._finish(self._slot, self.server, False, perf_counter() - self._started)
        else:
            # CancelledError, KeyboardInterrupt, GeneratorExit: nothing learnt about the server.
            pool._finish(self._slot, self.server, True, None)

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "released" if self._pool is None else "in flight"
        return f"<Lease {self.server.url} {state}>"


class CountedLease(Lease):
    """A lease from ``acquire()``'s least-connections fast path: it knows the picker's index of its
    instance, so that its ordinary end updates the picker's counts without a lookup or a call.

    ``_counting`` is the pool's ``_counting`` when it was acquired, ``_index`` the instance's index
    in that picker. Anything but an ordinary success ends it as a `Lease` does.
    """

    __slots__ = ("_counting", "_index")

    _counting: Counting
    _index: int

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool = self._pool
        slot = self._slot
        if exc_type is not None or pool is None or self._success is not None or slot.attention:
            Lease.__exit__(self, exc_type, exc, tb)
            return
        token = self._token  # (as Lease.__exit__ does: a call would cost a tenth of this path)
        if token is not None:
            self._token = None
            try:
                _leave(token)
            except ValueError:
                pass
        self._pool = None
        latency = perf_counter() - self._started
        owner = pool._owner
        try:
            owner.pop()  # the ownership of the picker's counts (see zklb._pool)
        except IndexError:  # owned elsewhere: the pool queues it
            pool._finish(slot, self.server, True, latency)
            return
        counting = self._counting
        if pool._counting is not counting:  # re-read as the owner: the picker was replaced
            owner.append(True)
            pool._finish(slot, self.server, True, latency)
            return
        try:
            next(slot.finished)  # (and one more request recorded: see StatsRecorder)
            # LeastConnectionsPicker.released(), written out: a call frame is a tenth of this path.
            picker = counting[0]
            i = self._index
            keys = picker._keys
            key = keys[i] - picker._step2[i]
            if key == picker._lo2:
                picker._ring.append(i)
                keys[i] = key - 1
            elif keys[i] > 1:
                picker._move(i, (keys[i] >> 1) - picker._step[i])
        finally:
            owner.append(True)
        slot.last_latency = latency
        ewma = slot.latency_ewma
        slot.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)
        if pool._deferred and not pool._draining_now:
            pool._drain()  # releases queued meanwhile
