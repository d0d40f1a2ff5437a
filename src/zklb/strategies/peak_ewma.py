"""Peak EWMA, Finagle's and Linkerd's latency-aware balancer, picked by power of two choices.

Each instance has a *cost*: a moving average of its latency that jumps up at once to a sample above it
(the peak) and otherwise decays towards new samples over ``decay`` seconds. Between samples it decays
towards zero, as Finagle's does when it reads the cost with a zero sample, so an instance that was slow
once is tried again after a while instead of starved for ever. A pick draws two distinct instances and
takes the lower ``cost * (in_flight + 1) / weight``.

The decay costs nothing per pick. ``cost(t) = c * exp(-(t - t0) / decay)`` for every instance alike, so
each instance stores ``C = c * exp((t0 - epoch) / decay)`` and the current costs of two instances compare
as their stored ``C``: the common factor ``exp(-(t - epoch) / decay)`` cancels. A pick reads no clock and
computes no exponential; a sample (``released`` with its latency, or ``observe``) does both, once. The
epoch moves forward, rescaling every ``C`` (O(n)), before the factor could overflow a float.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import ClassVar

from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies._counts import InFlightCounts
from zklb.strategies.base import Picker

__all__ = ["PeakEwma", "PeakEwmaPicker"]

# Rebase when the stored costs have been scaled up by exp(this): far from a float's limit (exp(709)).
_REBASE_AFTER = 200.0


class PeakEwma:
    """Latency-aware power of two choices on a peak-sensitive moving average of latency.

    ``decay``: seconds over which the average forgets (Finagle's ``decayTime``); ``default_rtt``: the
    cost, in seconds, of an instance without samples yet; one that joins a pool already measured starts
    at the lowest cost there, if lower, so that it is tried at once rather than starved. Latency comes
    from lease outcomes and ``lb.report(server, success=..., latency=...)``. Cost: O(n) to build, O(1)
    per pick (no clock, no exponential), O(1) per sample. State: a cost, a sample time and an in-flight
    count per instance, carried over to the next membership for instances that stay.
    """

    name: ClassVar[str] = "peak_ewma"

    def __init__(
        self,
        decay: float = 10.0,
        default_rtt: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        for label, value in (("decay", decay), ("default_rtt", default_rtt)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"{label} must be a finite number, got {value!r}")
        if decay <= 0:
            raise ConfigurationError(f"decay must be positive, got {decay!r}")
        if default_rtt < 0:
            raise ConfigurationError(f"default_rtt must be >= 0, got {default_rtt!r}")
        self.decay = float(decay)
        self.default_rtt = float(default_rtt)
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self._last: PeakEwmaPicker | None = None

    def build(self, membership: Membership) -> Picker:
        """A `PeakEwmaPicker`; instances the previous picker knew keep their cost."""
        picker = PeakEwmaPicker(membership, self, self._last)
        self._last = picker
        return picker

    def __repr__(self) -> str:
        return f"PeakEwma(decay={self.decay}, default_rtt={self.default_rtt})"


class PeakEwmaPicker(InFlightCounts):
    """Peak-EWMA picks over one snapshot; see the module docstring for how costs are kept.

    Threading: ``pick`` reads costs and counts from lists the mutators (``released``, ``observe``,
    serialised by the balancer) update in place; a value one update stale only changes which of two
    valid candidates wins. A rebase replaces the cost list in one assignment.
    """

    tracks_load: bool = True

    __slots__ = (
        "_clock",
        "_costs",
        "_decay",
        "_epoch",
        "_random",
        "_rng",
        "_size",
        "_stamps",
        "_weights",
    )

    def __init__(self, membership: Membership, settings: PeakEwma, previous: PeakEwmaPicker | None) -> None:
        instances = self._track(membership)
        self._weights = [float(inst.weight) for inst in instances]
        self._size = len(instances)
        self._decay = settings.decay
        self._clock = settings.clock
        self._rng = settings.rng
        self._random: Callable[[], float] = settings.rng.random
        now = self._clock()
        self._epoch = now
        self._costs = [settings.default_rtt] * len(instances)
        self._stamps = [now] * len(instances)
        if previous is not None:
            newcomers = []
            for i, inst in enumerate(instances):
                if (j := previous._index.get(inst.id)) is not None:
                    self._costs[i] = previous.cost(j, now)
                    self._stamps[i] = previous._stamps[j]
                else:
                    newcomers.append(i)
            if newcomers and len(newcomers) < len(instances):
                # A newcomer at default_rtt beside instances whose cost fell to 1 ms would lose every
                # comparison, so no sample could ever correct its guess (its cost decays no faster than
                # theirs): it starts as good as the best instead, and its first answers set its cost.
                start = min(self._costs)  # newcomers hold default_rtt: never above it
                for i in newcomers:
                    self._costs[i] = start

    def cost(self, i: int, now: float) -> float:
        """Instance ``i``'s cost (seconds of latency, before load) at clock time ``now``."""
        return self._costs[i] * math.exp(-(now - self._epoch) / self._decay)

    def pick(self) -> ServiceInstance:
        """The cheaper of two distinct random instances. O(1), lock-free, no clock."""
        size = self._size
        if size == 1:
            return self._instances[0]
        u = self._random() * size
        a = int(u)
        b = int((u - a) * (size - 1))  # one draw for both, as in LeastRequestPicker._pick_two
        if b >= a:
            b += 1
        # _better(a, b), written out: the call is a sizeable part of this pick's cost.
        costs = self._costs
        in_flight = self._in_flight
        weights = self._weights
        load_a = in_flight[a]
        load_b = in_flight[b]
        cost_a = costs[a] * (load_a + 1) * weights[b]
        cost_b = costs[b] * (load_b + 1) * weights[a]
        if cost_b < cost_a or (cost_b == cost_a and load_b * weights[a] < load_a * weights[b]):
            return self._instances[b]
        return self._instances[a]

    def _better(self, a: int, b: int) -> int:
        costs = self._costs
        in_flight = self._in_flight
        weights = self._weights
        # cost * (in_flight + 1) / weight, cross-multiplied; equal costs (both decayed to 0, say): load.
        cost_a = costs[a] * (in_flight[a] + 1) * weights[b]
        cost_b = costs[b] * (in_flight[b] + 1) * weights[a]
        if cost_b < cost_a or (cost_b == cost_a and in_flight[b] * weights[a] < in_flight[a] * weights[b]):
            return b
        return a

    def _best_of(self, rest: list[int]) -> int:
        """The cheaper of two random indices of ``rest`` (for ``pick_excluding``)."""
        if len(rest) == 1:
            return rest[0]
        a, b = self._rng.sample(rest, 2)
        return self._better(a, b)

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        """One request ended; its latency (if > 0: 0 means none was measured) is a sample. O(1)."""
        i = self._count_down(instance)
        if i is not None and latency > 0.0:
            self._sample(i, latency)

    def observe(self, instance: ServiceInstance, latency: float) -> None:
        """A latency sample for ``instance`` outside a lease (``lb.report(..., latency=...)``). O(1)."""
        i = self._index.get(instance.id)
        if i is not None and latency > 0.0:
            self._sample(i, latency)

    def _sample(self, i: int, rtt: float) -> None:
        now = self._clock()
        decay = self._decay
        if (now - self._epoch) / decay > _REBASE_AFTER:
            scale = math.exp(-(now - self._epoch) / decay)
            self._costs = [c * scale for c in self._costs]
            self._epoch = now
        grow = math.exp((now - self._epoch) / decay)
        current = self._costs[i] / grow
        if rtt > current:
            cost = rtt  # the peak: a slower sample counts in full at once
        else:
            # EWMA with a weight by elapsed time; `current` has already decayed by that weight.
            cost = current + rtt * (1.0 - math.exp(-max(0.0, now - self._stamps[i]) / decay))
        self._costs[i] = cost * grow
        self._stamps[i] = now
