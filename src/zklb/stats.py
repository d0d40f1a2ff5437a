"""Per-instance request statistics, fed by the outcomes of ``acquire()``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InstanceStats", "StatsRecorder"]

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


class StatsRecorder:
    """Mutable counters of one instance; owned by the balancer, which updates them under its lock."""

    __slots__ = ("consecutive_failures", "failures", "last_latency", "latency_ewma", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.latency_ewma: float | None = None
        self.last_latency: float | None = None

    def snapshot(
        self, in_flight: int, ejected_until: float | None = None, times_ejected: int = 0
    ) -> InstanceStats:
        """A frozen copy, with the current in-flight count and ejection state."""
        return InstanceStats(
            in_flight=in_flight,
            requests=self.requests,
            failures=self.failures,
            consecutive_failures=self.consecutive_failures,
            latency_ewma=self.latency_ewma,
            last_latency=self.last_latency,
            ejected=ejected_until is not None,
            ejected_until=ejected_until,
            times_ejected=times_ejected,
        )
