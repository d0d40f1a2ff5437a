"""Least request, as Envoy does it: the best of ``choice_count`` distinct random instances.

Each candidate scores ``weight / (in_flight + 1) ** active_request_bias`` and the highest wins (ties: the
first drawn). ``active_request_bias`` 1.0 weighs load and weight equally; 0.0 ignores load (weighted
random among the candidates' weights); larger values chase idle instances harder. With the default bias
the comparison is exact, on integers: ``w_b * (f_a + 1) > w_a * (f_b + 1)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar

from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies._counts import InFlightCounts
from zklb.strategies.base import Picker

__all__ = ["LeastRequest", "LeastRequestPicker"]

#: Envoy's bounds on the number of random choices.
MIN_CHOICES, MAX_CHOICES = 2, 10


class LeastRequest:
    """Power of ``choice_count`` distinct random choices, scored by weight and requests in flight.

    Cost: O(n) to build or seed, O(choice_count) per pick (O(1) for a fixed count), O(1) per
    ``acquired``/``released``. State: one in-flight count per instance.
    """

    name: ClassVar[str] = "least_request"

    def __init__(
        self,
        choice_count: int = 2,
        active_request_bias: float = 1.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(choice_count, bool) or not isinstance(choice_count, int):
            raise ConfigurationError(f"choice_count must be an integer, got {choice_count!r}")
        if not MIN_CHOICES <= choice_count <= MAX_CHOICES:
            raise ConfigurationError(
                f"choice_count must be between {MIN_CHOICES} and {MAX_CHOICES}, got {choice_count}"
            )
        if isinstance(active_request_bias, bool) or not isinstance(active_request_bias, int | float):
            raise ConfigurationError(f"active_request_bias must be a number, got {active_request_bias!r}")
        if not 0.0 <= active_request_bias < float("inf"):
            raise ConfigurationError(
                f"active_request_bias must be finite and >= 0, got {active_request_bias!r}"
            )
        self.choice_count = choice_count
        self.active_request_bias = float(active_request_bias)
        self.rng = rng if rng is not None else random.Random()

    def build(self, membership: Membership) -> Picker:
        """A `LeastRequestPicker` over ``membership`` with every instance idle (until ``seed``)."""
        return LeastRequestPicker(membership, self.choice_count, self.active_request_bias, self.rng)

    def __repr__(self) -> str:
        bias = self.active_request_bias
        return f"LeastRequest(choice_count={self.choice_count}, active_request_bias={bias})"


class LeastRequestPicker(InFlightCounts):
    """Least-request picks over one snapshot.

    Threading: ``pick`` reads counts from a list the mutators update in place; a count one update stale
    only changes which of the valid candidates wins.
    """

    tracks_load: bool = True

    __slots__ = (
        "_bias",
        "_choices",
        "_random",
        "_rng",
        "_size",
        "_weights",
        "pick",
    )

    #: The best of the random candidates. O(choice_count), lock-free.
    pick: Callable[[], ServiceInstance]

    def __init__(
        self, membership: Membership, choice_count: int, active_request_bias: float, rng: random.Random
    ) -> None:
        instances = self._track(membership)
        self._weights = [inst.weight for inst in instances]
        self._size = len(instances)
        self._choices = min(choice_count, len(instances))
        self._bias = active_request_bias
        self._rng = rng
        self._random: Callable[[], float] = rng.random
        if len(instances) == 1:
            self.pick = self._only
        elif self._choices == 2 and active_request_bias == 1.0:
            self.pick = self._pick_two
        else:
            self.pick = self._pick_many

    def _only(self) -> ServiceInstance:
        return self._instances[0]

    def _pick_two(self) -> ServiceInstance:
        """Two distinct random instances, the better by ``weight / (in_flight + 1)``, in integers."""
        size = self._size
        # One draw for both: the fraction left of u * n after its integer part is uniform and
        # independent of it, with 53 - log2(n) bits to spare (a C call less per pick).
        u = self._random() * size
        a = int(u)
        b = int((u - a) * (size - 1))
        if b >= a:
            b += 1  # distinct: b is uniform over the other n - 1
        in_flight = self._in_flight
        weights = self._weights
        if weights[b] * (in_flight[a] + 1) > weights[a] * (in_flight[b] + 1):
            a = b
        return self._instances[a]

    def _pick_many(self) -> ServiceInstance:
        return self._instances[self._best(self._rng.sample(range(self._size), self._choices))]

    def _best(self, candidates: list[int]) -> int:
        in_flight = self._in_flight
        weights = self._weights
        bias = self._bias
        best = candidates[0]
        top = weights[best] / (in_flight[best] + 1) ** bias
        for c in candidates[1:]:
            score = weights[c] / (in_flight[c] + 1) ** bias
            if score > top:
                best, top = c, score
        return best

    def _best_of(self, rest: list[int]) -> int:
        """The best of the random candidates among the indices ``rest`` (for ``pick_excluding``)."""
        return self._best(self._rng.sample(rest, min(self._choices, len(rest))))
