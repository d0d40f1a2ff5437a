"""Slow start: a new (or returning) instance gets a growing share of its weight over a window.

Envoy's formula: an instance ``t`` seconds into its window gets ``weight * f`` with
``f = max(min_weight_percent / 100, (max(t, 1) / window) ** (1 / aggression))``, and all of its weight
from ``window`` on. ``aggression`` 1 ramps linearly; above 1 the instance gets more traffic early on.

How the balancer applies it. A picker that offers ``ramped_pick(factors)`` (weighted round robin,
weighted random) is rebuilt over the ramped weights at each of the `STEPS` steps per window (each
factor taken at its step's midpoint), and a pick in slow start is that picker's own pick: the pool
chains it (C-level `itertools` chain) to one look at the clock per stretch of up to 1,024 picks (about
four per step at the rate seen), and the look that finds a step passed builds the next one, off the
pool's lock, once per step; meanwhile other picks are thinned (below). Any other strategy (the
load-aware ones, round robin, random) is *thinned*: while some instance ramps, a pick of instance
``i`` is kept with probability ``f_i / F`` and otherwise drawn again, where ``F`` is the largest ``f``
(1 while any instance is past its ramp), so a strategy that gives ``i`` a share ``p_i`` gives it
``p_i * f_i / sum(p_j * f_j)``. Thinned picks go through the same chain, a step's thinning function
in place of the ramped picker: a dict lookup more per pick (and a draw for a ramping instance), none
when every ramp keeps the same pace (nothing to thin). While some instance is ejected or draining, a
wrapper thins the picks and looks at the clock on each. When the last ramp ends, the balancer goes back
to the strategy's bare pick.

When a ramp starts (`Ramp.start_of`): an instance that joins ramps from the later of two times: when
this balancer first saw it, and its ``registered_at``; an instance already there when the balancer
loaded its first membership ramps from its ``registered_at`` alone (warm servers do not ramp because a
client started), or not at all without one. One that returns from ejection ramps from its return.
The window is ``window`` unless the instance's metadata gives its own, in seconds, under
``slow_start_window`` (`WINDOW_METADATA`): a codec with per-instance warm-up data (Dubbo's ``warmup``
and ``timestamp``) hands it over as that metadata entry and ``registered_at``.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance

__all__ = ["WINDOW_METADATA", "Ramp", "SlowStart"]

#: Metadata key of an instance's own slow-start window, in seconds (a codec's warm-up data).
WINDOW_METADATA = "slow_start_window"

# The ramp moves in steps of this fraction of the shortest window ramping: each step is an O(ramping)
# pass that sets every ramping instance's chance to stand, so a pick computes nothing but a draw.
STEPS = 50


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Slow-start settings: ``LoadBalancer(..., slow_start=SlowStart(window=30.0))``.

    - ``window``: seconds from the ramp's start to full weight.
    - ``min_weight_percent``: the share of its weight an instance gets at first (Envoy's default 10).
    - ``aggression``: the ramp's curve, ``(t / window) ** (1 / aggression)``; 1 is linear.
    """

    window: float = 30.0
    min_weight_percent: float = 10.0
    aggression: float = 1.0

    def __post_init__(self) -> None:
        for name in ("window", "min_weight_percent", "aggression"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"slow start {name} must be a finite number, got {value!r}")
        if self.window <= 0:
            raise ConfigurationError(f"slow start window must be positive, got {self.window!r}")
        if not 0 < self.min_weight_percent <= 100:
            raise ConfigurationError(
                f"slow start min_weight_percent must be in (0, 100], got {self.min_weight_percent!r}"
            )
        if self.aggression <= 0:
            raise ConfigurationError(f"slow start aggression must be positive, got {self.aggression!r}")

    def factor(self, elapsed: float, window: float | None = None) -> float:
        """The share of its weight an instance gets ``elapsed`` seconds into its ramp (1.0 once over)."""
        span = self.window if window is None else window
        if elapsed >= span:
            return 1.0
        floor = self.min_weight_percent / 100.0
        ramped: float = (max(elapsed, 1.0) / span) ** (1.0 / self.aggression)
        return min(1.0, max(floor, ramped))  # a window under 1 s: max(t, 1) / window may exceed 1

    def window_of(self, instance: ServiceInstance) -> float:
        """The instance's own window (metadata ``slow_start_window``, seconds) if valid, else ``window``."""
        text = instance.metadata.get(WINDOW_METADATA)
        if text is not None:
            try:
                value = float(text)
            except ValueError:
                return self.window
            if math.isfinite(value) and value > 0:
                return value
        return self.window


class Ramp:
    """Which instances are ramping, since when, and each one's chance for a pick of it to stand.

    Mutated by the balancer under its lock (``follow``, ``restart``, ``tick``); read lock-free by
    picks (``accept``, ``next_at``, ``draw``), which only ever see a whole dict or float, swapped in one
    assignment.
    """

    __slots__ = (
        "_ramping",
        "_seen",
        "_wall",
        "accept",
        "armed_at",
        "armed_picks",
        "building",
        "draw",
        "next_at",
        "ramped",
        "ramped_for",
        "ramped_step",
        "settings",
        "step_length",
        "steps",
        "token",
    )

    def __init__(
        self,
        settings: SlowStart,
        *,
        rng: random.Random | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        #: The uniform draw a ramping instance's pick is tested with.
        self.draw: Callable[[], float] = (rng if rng is not None else random.Random()).random
        self._wall = wall
        self._seen: dict[str, float] = {}  # instance id -> when this balancer first saw it (clock time)
        # instance id -> (ramp start, window), for instances still ramping; replaced, never mutated.
        self._ramping: dict[str, tuple[float, float]] = {}
        #: Instance id -> the chance ``f / F`` that a pick of it stands, until ``next_at`` (warm: absent).
        self.accept: dict[str, float] = {}
        #: Clock time of the next step (``tick``); infinite while nothing ramps.
        self.next_at = math.inf
        #: Steps taken so far, and the length of the current one (seconds).
        self.steps = 0
        self.step_length = math.inf
        # The pool's ramped pick function (`zklb._pool_skips`): the one built for step ``ramped_step``
        # from picker ``ramped_for``; the token of the pick function in use (None: not a ramped one);
        # when it was armed and for how many picks; held (never waited for) while one is being built.
        self.ramped: Callable[[], ServiceInstance] | None = None
        self.ramped_for: object = None
        self.ramped_step = -1
        self.token: object = None
        self.armed_at = 0.0
        self.armed_picks = 0
        self.building = threading.Lock()

    @property
    def ramping(self) -> Mapping[str, tuple[float, float]]:
        """Instance id -> (ramp start, window) of the instances ramping now."""
        return self._ramping

    def start_of(self, instance: ServiceInstance, seen: float, now: float, first: bool) -> float:
        """When ``instance``'s ramp starts, in clock time (see the module docstring)."""
        registered = instance.registered_at
        if registered is None:
            return -math.inf if first else seen
        if registered.tzinfo is None:
            registered = registered.replace(tzinfo=UTC)
        age = max(0.0, (self._wall() - registered).total_seconds())
        from_registration = now - age
        return from_registration if first else max(seen, from_registration)

    def follow(self, instances: tuple[ServiceInstance, ...], now: float, first: bool) -> None:
        """A new membership: start the ramps of instances not seen before; forget those that left."""
        seen = {}
        ramping = {}
        for inst in instances:
            key = inst.id
            if key in self._seen:
                seen[key] = self._seen[key]
                entry = self._ramping.get(key)
                if entry is not None:
                    ramping[key] = entry
                continue
            seen[key] = now
            window = self.settings.window_of(inst)
            start = self.start_of(inst, now, now, first)
            if now - start < window:
                ramping[key] = (start, window)
        self._seen = seen
        self._ramping = ramping
        self.tick(now, len(instances))

    def restart(self, instances: list[ServiceInstance], now: float, size: int) -> None:
        """Instances back from ejection ramp again from ``now``."""
        ramping = dict(self._ramping)
        for inst in instances:
            ramping[inst.id] = (now, self.settings.window_of(inst))
        self._ramping = ramping
        self.tick(now, size)

    def tick(self, now: float, size: int) -> None:
        """Take the step that starts at ``now`` (of a pool of ``size`` instances): drop the ramps that
        are over and set every other one's chance for the step. O(ramping)."""
        ramping = {k: v for k, v in self._ramping.items() if now - v[0] < v[1]}
        self._ramping = ramping
        self.steps += 1
        if not ramping:
            self.accept, self.next_at, self.step_length = {}, math.inf, math.inf
            self.ramped = self.ramped_for = None  # nothing to hold on to
            return
        step = min(window for _, window in ramping.values()) / STEPS
        self.step_length = step
        middle = now + step / 2
        factor = self.settings.factor
        factors = {key: factor(middle - start, window) for key, (start, window) in ramping.items()}
        top = max(factors.values()) if len(ramping) >= size else 1.0
        # A chance of 1 is left out: such a pick costs a dict miss, like a warm instance's (every
        # instance when all ramp at the same pace).
        self.accept = {key: f / top for key, f in factors.items() if f < top}
        self.next_at = now + step

    def admits(self, key: str) -> bool:
        """Whether a pick of instance ``key`` stands, in this step (with probability ``f / F``)."""
        chance = self.accept.get(key)
        return chance is None or self.draw() < chance
