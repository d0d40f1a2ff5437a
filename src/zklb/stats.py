"""Per-instance request statistics, fed by the outcomes of ``acquire()``."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

__all__ = ["InstanceStats", "StatsRecorder", "count_value"]

#: Weight of the newest sample in the latency moving average.
EWMA_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """What the balancer has seen of one instance since it joined the pool (a snapshot)."""

    in_flight: int
    requests: int
    failures: int
    consecutive_failures: int
    latency_ewma: float | None  # seconds; None until a request finished
    last_latency: float | None
    ejected: bool = False  # skipped by picks (passive health), unless the pool is in panic
    ejected_until: float | None = None  # the balancer clock's reading (time.monotonic()) it comes back at
    times_ejected: int = 0  # ejections since it joined the pool; each lasts longer than the last


#: Reads of the in-flight counters before `StatsRecorder.in_flight` settles for a lower bound.
_IN_FLIGHT_TRIES = 8


def count_value(counter: count[int]) -> int:
    """The value the next ``next(counter)`` returns, without taking it (its repr is ``count(N)``)."""
    return int(repr(counter)[6:-1])


class StatsRecorder:
    """The counters of one instance in one pool: requests in flight, outcomes, latency.

    Built for a hot path without a lock. ``started`` and ``finished`` are `itertools.count` objects:
    ``next()`` on one is a single C call, atomic under the GIL, so concurrent leases never lose a
    count, and the in-flight count is ``started - finished``. Requests recorded are ``finished``
    minus ``unrecorded``: nearly every finished request is one, so the hot path counts nothing more;
    the few exceptions (a cancelled request, one that ends after its instance left, an outcome
    reported outside a lease) adjust ``unrecorded``, under the pool's lock. The
    latency average is a plain read-modify-write: a sample lost to a race leaves a moving average
    as useful as before. ``failures``, ``consecutive_failures`` and ``attention`` change only under
    the pool's lock; ``attention`` is True while a success must take that lock (failures in a row
    to reset, or a probation to end), so an ordinary success checks one flag. A success of a request
    sent before the current failures in a row began resets nothing: it answers for the server as it
    was, not as it is (a slow answer recorded after a crash's first failures must not delay ejection).
    """

    __slots__ = (
        "attention",
        "consecutive_failures",
        "failures",
        "finished",
        "last_latency",
        "latency_ewma",
        "started",
        "streak_began",
        "unrecorded",
    )

    def __init__(self) -> None:
        self.started = count()
        self.finished = count()
        self.forget()

    def forget(self) -> None:
        """Drop the outcome statistics (the instance rejoined); requests in flight stay counted."""
        self.unrecorded = count_value(self.finished)  # none recorded since
        self.failures = 0
        self.consecutive_failures = 0
        self.streak_began = 0.0  # perf_counter() at the first of the current failures in a row
        self.attention = False
        self.latency_ewma: float | None = None
        self.last_latency: float | None = None

    def in_flight(self) -> int:
        """Requests started and not finished, as they were at one instant; never negative.

        The two counters cannot be read at once, and requests go on meanwhile: ``finished`` is read
        before and after ``started``, and when both reads agree the difference is exact at the
        instant ``started`` was read. Under a steady stream of requests a few tries may not find such
        a moment; then the result is a lower bound (an instance never looks busier than it was).
        """
        started = 0
        for _ in range(_IN_FLIGHT_TRIES):
            finished = count_value(self.finished)
            started = count_value(self.started)
            if count_value(self.finished) == finished:
                return started - finished
        return max(0, started - count_value(self.finished))

    def requests(self) -> int:
        """Requests recorded: ended with an outcome while the instance was in the pool."""
        return count_value(self.finished) - self.unrecorded

    def add_latency(self, latency: float) -> None:
        """Feed one request's latency (seconds) into the moving average."""
        self.last_latency = latency
        ewma = self.latency_ewma
        self.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)

    def snapshot(self, ejected_until: float | None = None, times_ejected: int = 0) -> InstanceStats:
        """A frozen copy, with the ejection state passed in."""
        return InstanceStats(
            in_flight=self.in_flight(),
            requests=self.requests(),
            failures=self.failures,
            consecutive_failures=self.consecutive_failures,
            latency_ewma=self.latency_ewma,
            last_latency=self.last_latency,
            ejected=ejected_until is not None,
            ejected_until=ejected_until,
            times_ejected=times_ejected,
        )
