"""Passive health: outlier ejection, probation and panic mode, as pure logic.

Rules of this module:

- No kazoo, no I/O, no locks, no threads: the balancer calls in while holding its own short lock, and
  the clock is injected, so every decision here is exact in tests.
- An instance is *ejected* after ``consecutive_failures`` failures in a row, for
  ``base_ejection_time * times_ejected`` seconds (capped at ``max_ejection_time``): a flapping server
  stays out longer each time. When the time is up it comes back *on probation*: its next failure ejects
  it again at once; its next success ends the probation.
- At most ``max_ejection_percent`` of the pool is ejected at once, but always at least one instance may
  be, so that a pool of three can still shed its dead member.
- *Panic*: when fewer than ``panic_threshold`` percent of the pool are healthy, the balancer picks from
  the whole pool. Outlier detection reacts to symptoms, and when most servers look sick the likelier
  cause is the clients' own network or a shared dependency: some load on sick servers beats none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from zklb.errors import ConfigurationError

__all__ = ["Connection", "HealthPolicy", "OutlierDetector", "PoolStats"]

#: The ZooKeeper connection as a balancer reports it; ``"static"`` for a balancer without ZooKeeper.
Connection = Literal["connected", "suspended", "lost", "static"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How a `LoadBalancer` ejects failing instances (passive health); ``health=None`` turns it off.

    - ``consecutive_failures``: failures in a row that eject an instance (5, as Envoy's default).
    - ``base_ejection_time``: seconds out for the first ejection; the n-th lasts n times as long.
    - ``max_ejection_time``: the cap on one ejection, in seconds.
    - ``max_ejection_percent``: the most of the pool ejected at once (at least one instance may be).
    - ``panic_threshold``: below this percentage of healthy instances, pick from the whole pool.

    Frozen and checked when built: a bad value raises `ConfigurationError` saying which.
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    panic_threshold: float = 50.0

    def __post_init__(self) -> None:
        count = self.consecutive_failures
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"consecutive_failures must be an integer >= 1, got {count!r}")
        for name in ("base_ejection_time", "max_ejection_time"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.max_ejection_time < self.base_ejection_time:
            raise ConfigurationError(
                f"max_ejection_time ({self.max_ejection_time!r}) must be >= base_ejection_time "
                f"({self.base_ejection_time!r})"
            )
        for name in ("max_ejection_percent", "panic_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 100:
                raise ConfigurationError(f"{name} must be a percentage between 0 and 100, got {value!r}")

    def ejection_time(self, times_ejected: int) -> float:
        """How long the ``times_ejected``-th ejection lasts, in seconds."""
        return min(self.max_ejection_time, self.base_ejection_time * max(times_ejected, 1))

    def max_ejected(self, pool_size: int) -> int:
        """How many of ``pool_size`` instances may be ejected at once (at least one)."""
        return max(1, math.floor(pool_size * self.max_ejection_percent / 100 + 1e-9))

    def panics(self, pool_size: int, healthy: int) -> bool:
        """Whether a pool of ``pool_size`` with ``healthy`` healthy instances is in panic."""
        return pool_size > 0 and healthy * 100 < self.panic_threshold * pool_size


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The state of a balancer's pool at one moment (``lb.pool_stats()``).

    ``size`` counts every instance in the membership; ``healthy`` those neither ejected nor draining;
    ``panic`` says the balancer is picking from the whole pool because too few are healthy;
    ``version`` is the membership version; ``connection`` the ZooKeeper connection
    (``"connected"``, ``"suspended"``, ``"lost"``) or ``"static"`` without ZooKeeper.
    """

    size: int
    healthy: int
    ejected: int
    draining: int
    panic: bool
    version: int
    connection: Connection


class OutlierDetector:
    """Ejection state of one pool under a `HealthPolicy` (see the module docstring for the rules).

    Not thread-safe: its owner serialises calls (the balancer holds its lock). ``ejected`` and
    ``times`` are copy-on-write (replaced, never changed in place), so a reader may take a reference
    under that lock and read it after letting go: ``stats()`` never holds the lock for a copy.
    O(ejected) per ejection, `expire` and `retain` (ejections are few: ``max_ejection_percent``).
    """

    __slots__ = ("_clock", "ejected", "next_return", "policy", "probation", "times")

    def __init__(self, policy: HealthPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        #: Ejected instance id -> the clock reading at which it comes back (copy-on-write).
        self.ejected: dict[str, float] = {}
        #: Ids back from an ejection whose next outcome decides: a failure ejects again at once.
        self.probation: set[str] = set()
        #: The earliest ``ejected`` deadline, or infinity: one comparison tells whether to `expire`.
        self.next_return = math.inf
        #: Instance id -> how many times it was ejected since it joined the pool (copy-on-write).
        self.times: dict[str, int] = {}

    def now(self) -> float:
        """The injected clock's reading."""
        return self._clock()

    def times_ejected(self, key: str) -> int:
        """How many times ``key`` has been ejected since it joined the pool."""
        return self.times.get(key, 0)

    def on_failure(self, key: str, consecutive: int, pool_size: int) -> bool:
        """Record that ``key`` failed for the ``consecutive``-th time in a row; True if it is now ejected."""
        if key in self.ejected:
            return False  # a late outcome of a request sent before the ejection
        if consecutive < self.policy.consecutive_failures and key not in self.probation:
            return False
        if len(self.ejected) >= self.policy.max_ejected(pool_size):
            return False
        times = self.times.get(key, 0) + 1
        self.times = {**self.times, key: times}
        until = self._clock() + self.policy.ejection_time(times)
        self.ejected = {**self.ejected, key: until}
        self.probation.discard(key)
        self.next_return = min(self.next_return, until)
        return True

    def on_success(self, key: str) -> None:
        """Record a success of ``key``: its probation, if any, is over."""
        self.probation.discard(key)

    def expire(self, now: float | None = None) -> list[str]:
        """Bring back (on probation) every instance whose ejection has ended; returns their ids."""
        if now is None:
            now = self._clock()
        if now < self.next_return:
            return []
        back = [key for key, until in self.ejected.items() if until <= now]
        self.ejected = {key: until for key, until in self.ejected.items() if until > now}
        self.probation.update(back)
        self.next_return = min(self.ejected.values(), default=math.inf)
        return back

    def retain(self, keys: Collection[str]) -> None:
        """Forget instances not in ``keys`` (they left the pool)."""
        # O(ejected + ever ejected + on probation), not O(keys): this runs under the balancer's lock.
        if any(k not in keys for k in self.ejected):
            self.ejected = {k: until for k, until in self.ejected.items() if k in keys}
        if any(k not in keys for k in self.times):
            self.times = {k: times for k, times in self.times.items() if k in keys}
        self.probation.difference_update([k for k in self.probation if k not in keys])
        self.next_return = min(self.ejected.values(), default=math.inf)
