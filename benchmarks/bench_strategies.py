"""Micro-benchmarks of the strategies' pickers, relative to a bare Python round-robin method.

Run: ``python benchmarks/bench_strategies.py``. Every number is the best of several
repeats (``time.perf_counter_ns``), with the garbage collector paused while timing. Picks go through
``LB.get_server``, which calls the picker's bound ``pick`` the way ``LoadBalancer`` will, so the ratio
column compares like with like: 1.0 means "as fast as a plain Python method that indexes a list".
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Collection, Mapping, Sequence

from timing import Bare, best_ns_per_call

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import LeastConnections, Picker, RoundRobin, WeightedRoundRobin
from zklb.strategies.random import PowerOfTwoChoices, RandomChoice
from zklb.strategies.weighted import WeightedRoundRobinPicker


def make_membership(weights: Sequence[int]) -> Membership:
    instances = tuple(
        ServiceInstance(id=f"i{k:06d}", host="127.0.0.1", port=1024 + k % 60000, weight=w)
        for k, w in enumerate(weights)
    )
    return Membership(service="svc", version=1, instances=instances)


class LB:
    """Stands in for ``LoadBalancer``: ``get_server`` calls the current picker's bound ``pick``."""

    def __init__(self, picker: Picker) -> None:
        self._pick = picker.pick

    def get_server(self) -> ServiceInstance:
        return self._pick()


class AcquiringLB:
    """Stands in for ``LoadBalancer.acquire()``: pick + count under a lock, then release under it.

    With ``fused`` the picker's optional ``acquire_pick()`` replaces ``pick()`` + ``acquired()``, as
    the balancer does when a picker has it.
    """

    def __init__(self, picker: Picker, *, fused: bool = False) -> None:
        self._lock = threading.Lock()
        self._picker = picker
        self._counts: dict[str, int] = {}
        self._acquire_pick: Callable[[], ServiceInstance] | None = (
            getattr(picker, "acquire_pick", None) if fused else None
        )

    def acquire_release(self) -> None:
        picker = self._picker
        with self._lock:
            if self._acquire_pick is not None:
                instance = self._acquire_pick()
            else:
                instance = picker.pick()
                picker.acquired(instance)
            self._counts[instance.id] = self._counts.get(instance.id, 0) + 1
        with self._lock:
            self._counts[instance.id] -= 1
            picker.released(instance, True, 0.001)


class Leases:
    """A picker's own load updates, no lock: each call ends one request and starts another.

    ``held`` requests stay in flight (one at random ends per call; ``held=0``: the request started
    is ended right away). ``fused`` starts requests with ``acquire_pick()``, else ``pick()`` +
    ``acquired()`` (through a small function). The random choices are drawn in advance; the rows
    timed with `NoopPicker` (methods that return at once) show what the harness and the calls
    themselves cost, before any work in the picker.
    """

    def __init__(self, picker: Picker, held: int, *, fused: bool, seed: int = 3) -> None:
        self._released = picker.released
        acquire_pick = getattr(picker, "acquire_pick", None)
        if fused:
            assert acquire_pick is not None
            self._take: Callable[[], ServiceInstance] = acquire_pick
        else:
            pick, acquired = picker.pick, picker.acquired

            def take() -> ServiceInstance:
                instance = pick()
                acquired(instance)
                return instance

            self._take = take
        self._held = [self._take() for _ in range(held)]
        rng = random.Random(seed)
        self._slots = [rng.randrange(held) for _ in range(4096)] if held else []
        self._i = 0

    def cycle(self) -> None:
        """``released()`` of the request started right before, then start another."""
        self._released(self._take(), True, 0.001)

    def churn(self) -> None:
        """``released()`` of a random held request, then start one in its place."""
        i = self._i
        self._i = i + 1
        k = self._slots[i & 4095]
        held = self._held
        self._released(held[k], True, 0.001)
        held[k] = self._take()


class NoopPicker:
    """A picker whose methods do nothing: times the `Leases` harness alone."""

    tracks_load = True

    def __init__(self, membership: Membership) -> None:
        self._first = membership.instances[0]

    def pick(self) -> ServiceInstance:
        return self._first

    def acquire_pick(self) -> ServiceInstance:
        return self._first

    def pick_excluding(self, exclude: Collection[str]) -> ServiceInstance | None:
        return self._first

    def seed(self, in_flight: Mapping[str, int]) -> None:
        pass

    def acquired(self, instance: ServiceInstance) -> None:
        pass

    def released(self, instance: ServiceInstance, success: bool, latency: float) -> None:
        pass


def pick_table(sizes: Sequence[int], calls: int, repeats: int, rng: random.Random) -> None:
    print(f"{'strategy':44s} {'n':>6s} {'ns/call':>8s} {'ratio':>6s}")
    for n in sizes:
        typical = make_membership([rng.randint(1, 10) for _ in range(n)])
        huge = make_membership([rng.randint(1, 10_000) for _ in range(n)])
        busy = {inst.id: rng.randint(0, 3) for inst in typical.instances}
        bare = best_ns_per_call(Bare(typical.instances).get_server, calls, repeats)

        def seeded(picker: Picker, in_flight: dict[str, int]) -> Picker:
            picker.seed(in_flight)
            return picker

        wrr_huge = WeightedRoundRobin().build(huge)
        assert isinstance(wrr_huge, WeightedRoundRobinPicker)
        rows: list[tuple[str, Callable[[], object]]] = [
            ("round_robin", LB(RoundRobin().build(typical)).get_server),
            ("weighted_round_robin, weights 1..10", LB(WeightedRoundRobin().build(typical)).get_server),
            (f"weighted_round_robin, 1..10k ({wrr_huge.mode})", LB(wrr_huge).get_server),
            ("least_connections, idle", LB(LeastConnections().build(typical)).get_server),
            (
                "least_connections, 0..3 in flight",
                LB(seeded(LeastConnections().build(typical), busy)).get_server,
            ),
            ("random", LB(RandomChoice(random.Random(1)).build(typical)).get_server),
            ("power_of_two_choices", LB(PowerOfTwoChoices(random.Random(1)).build(typical)).get_server),
            ("acquire+release, round_robin", AcquiringLB(RoundRobin().build(typical)).acquire_release),
            (
                "acquire+release, least_connections idle",
                AcquiringLB(LeastConnections().build(typical)).acquire_release,
            ),
            (
                "acquire+release, least_connections 0..3",
                AcquiringLB(seeded(LeastConnections().build(typical), busy)).acquire_release,
            ),
            (
                "acquire+release, least_connections fused",
                AcquiringLB(LeastConnections().build(typical), fused=True).acquire_release,
            ),
            (
                "acquire+release, least_connections fused 0..3",
                AcquiringLB(seeded(LeastConnections().build(typical), busy), fused=True).acquire_release,
            ),
        ]
        # The least-connections picker's own load updates (no lock): pick() + acquired() +
        # released() against the fused acquire_pick() + released(), with 0 requests held, 50 held
        # at random, and 4n held (every instance busy, so the lowest load changes on most calls).
        for held, label in ((0, "loop"), (50, "50 held"), (4 * n, "all busy")):
            for fused in (False, True):
                leases = Leases(LeastConnections().build(typical), held, fused=fused)
                name = "acquire_pick()+released()" if fused else "pick()+acquired()+released()"
                rows.append((f"lc {name}, {label}", leases.churn if held else leases.cycle))
        for held, label in ((0, "loop"), (50, "held")):
            for fused in (False, True):
                leases = Leases(NoopPicker(typical), held, fused=fused)
                name = "acquire_pick()+released()" if fused else "pick()+acquired()+released()"
                rows.append((f"(no-op {name}, {label})", leases.churn if held else leases.cycle))
        print(f"{'bare method (baseline)':44s} {n:6d} {bare:8.1f} {1:6.2f}")
        for label, fn in rows:
            ns = best_ns_per_call(fn, calls, repeats)
            print(f"{label:44s} {n:6d} {ns:8.1f} {ns / bare:6.2f}")
        print()


def build_table(rng: random.Random) -> None:
    print(f"{'weighted_round_robin build':44s} {'n':>6s} {'mode':>9s} {'W':>10s} {'ms':>8s}")
    cases = [(n, 10) for n in (10, 1_000, 10_000)] + [(1_000, 100), (1_000, 1_000), (10_000, 10_000)]
    for n, top in cases:
        membership = make_membership([rng.randint(1, top) for _ in range(n)])
        best = float("inf")
        picker = None
        for _ in range(3):
            start = time.perf_counter_ns()
            picker = WeightedRoundRobinPicker(membership)
            best = min(best, time.perf_counter_ns() - start)
        assert picker is not None
        label = f"weights 1..{top}"
        print(f"{label:44s} {n:6d} {picker.mode:>9s} {picker.cycle_length:10d} {best / 1e6:8.1f}")
    print()


def memory_report(rng: random.Random) -> None:
    membership = make_membership([rng.randint(1, 10_000) for _ in range(10_000)])
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    picker = WeightedRoundRobinPicker(membership)
    for _ in range(1000):
        picker.pick()
    after = tracemalloc.take_snapshot()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(
        f"weighted_round_robin, 10,000 instances, weights 1..10,000 (W={picker.cycle_length:,}, "
        f"mode {picker.mode}): holds {held / 1024:.0f} KiB, peak while building {peak / 1024:.0f} KiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=7, help="timing runs; the best one counts")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args()
    rng = random.Random(20240601)
    pick_table(args.sizes, args.calls, args.repeats, rng)
    build_table(rng)
    memory_report(rng)


if __name__ == "__main__":
    main()
