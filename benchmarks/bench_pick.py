"""Cost of the public hot path, ``LoadBalancer.get_server()`` and ``acquire()``, per strategy and pool size.

Every figure is a ratio to a bare Python round-robin method (``i = self.i; self.i = i + 1; return
s[i % len(s)]``) measured in the same run, so machines of different speed give comparable numbers.
Best of several repeats, garbage collector paused while timing. Run::

    python benchmarks/bench_pick.py            # add --quick for a faster, noisier run

The balancers are ``LoadBalancer.static(...)``: the same object and hot path as one fed by ZooKeeper,
without a ZooKeeper to start (the watcher only ever swaps the snapshot these calls read).
"""

from __future__ import annotations

import dataclasses
import random
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from timing import Bare, best_ns_per_call, calls_and_repeats

from zklb import LoadBalancer, ServiceInstance, SlowStart

STRATEGIES = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "power_of_two_choices",
    "weighted_random",
    "least_request",
    "peak_ewma",
    "consistent_hash",
)
TARGETS = {
    "round_robin": 1.5,
    "weighted_round_robin": 2.0,
    "least_connections": 2.5,
    "weighted_random": 3.0,
    "least_request": 4.0,
    "peak_ewma": 5.0,
    "consistent_hash": 6.0,  # with a key (the row below); without one it picks at random
}
#: Slow start active on every instance: at most this many times the same strategy's pick without it.
SLOW_START_TARGET = 1.5
SLOW_START_STRATEGIES = ("weighted_round_robin", "weighted_random", "least_request", "power_of_two_choices")
ACQUIRE_TARGET = 10.0


def instances(n: int, max_weight: int, seed: int = 7) -> list[ServiceInstance]:
    rng = random.Random(seed)
    return [
        ServiceInstance(
            id=f"i{k:06d}", host="127.0.0.1", port=1024 + k % 60000, weight=rng.randint(1, max_weight)
        )
        for k in range(n)
    ]


def acquire_release(lb: LoadBalancer) -> Callable[[], None]:
    acquire = lb.acquire

    def once() -> None:
        with acquire():
            pass

    return once


def keyed(lb: LoadBalancer) -> Callable[[], object]:
    """``get_server(key=...)`` over 4,096 distinct user-like keys, in turn."""
    keys = [f"user-{k}" for k in range(4096)]
    turn = iter(range(1 << 62))
    get_server = lb.get_server

    def once() -> object:
        return get_server(key=keys[next(turn) & 4095])

    return once


def slow_start(calls: int, repeats: int) -> None:
    """Each weighted strategy's get_server() with every instance in slow start, against the same without.

    "even": all registered together (every ramp at the same pace); "staggered": registered over the
    window, so factors differ. Weighted round robin and weighted random pick from a picker rebuilt over
    the ramped weights (no wrapper); the others are thinned (some picks drawn again when staggered).
    """
    print(
        f"\n{'slow start on every instance':<48}{'n':>7}{'without':>10}{'with':>8}{'ratio':>8}{'target':>8}"
    )
    now = datetime.now(UTC)
    settings = SlowStart(window=3600.0)
    for n in (1_000, 10_000):
        for max_weight in (10, 10_000):
            pool = instances(n, max_weight=max_weight)
            rng = random.Random(3)
            paces = {
                "even": [dataclasses.replace(i, registered_at=now) for i in pool],
                "staggered": [
                    dataclasses.replace(i, registered_at=now - timedelta(seconds=rng.uniform(0, 3600)))
                    for i in pool
                ],
            }
            names = SLOW_START_STRATEGIES if max_weight == 10 else SLOW_START_STRATEGIES[:2]
            for name in names:
                bare = best_ns_per_call(LoadBalancer.static(pool, strategy=name).get_server, calls, repeats)
                for pace, ramping in paces.items():
                    lb = LoadBalancer.static(ramping, strategy=name, slow_start=settings)
                    lb.get_server()  # the first pick builds the ramped picker of the step
                    ns = best_ns_per_call(lb.get_server, calls, repeats)
                    label = f"{name}, w 1..{max_weight:,} ({pace})"
                    print(
                        f"{label:<48}{n:>7}{bare:>10.1f}{ns:>8.1f}{ns / bare:>8.2f}{SLOW_START_TARGET:>8.1f}"
                    )


def main() -> None:
    calls, repeats = calls_and_repeats(__doc__, full=(200_000, 7), quick=(50_000, 3))

    print(f"{'call':<38}{'n':>7}{'ns/call':>10}{'ratio':>8}{'target':>8}")
    for n in (10, 1_000, 10_000):
        pool = instances(n, max_weight=10)
        baseline = best_ns_per_call(Bare(pool).get_server, calls, repeats)
        print(f"{'bare round-robin method':<38}{n:>7}{baseline:>10.1f}{1.0:>8.2f}{'':>8}")
        for name in STRATEGIES:
            lb = LoadBalancer.static(pool, strategy=name)
            ns = best_ns_per_call(lb.get_server, calls, repeats)
            target = f"{TARGETS[name]:.1f}" if n >= 1_000 and name in TARGETS else ""
            if name == "consistent_hash":
                target = ""
            print(f"{'get_server() ' + name:<38}{n:>7}{ns:>10.1f}{ns / baseline:>8.2f}{target:>8}")
        lb = LoadBalancer.static(pool, strategy="consistent_hash")
        ns = best_ns_per_call(keyed(lb), calls, repeats)
        target = f"{TARGETS['consistent_hash']:.1f}" if n >= 1_000 else ""
        print(f"{'get_server(key=) consistent_hash':<38}{n:>7}{ns:>10.1f}{ns / baseline:>8.2f}{target:>8}")
        for name in STRATEGIES:
            lb = LoadBalancer.static(pool, strategy=name)
            ns = best_ns_per_call(acquire_release(lb), calls // 4, repeats)
            label = "acquire() enter+exit " + name
            print(f"{label:<38}{n:>7}{ns:>10.1f}{ns / baseline:>8.2f}{ACQUIRE_TARGET:>8.1f}")

    slow_start(calls, repeats)

    # Weights up to 10,000 on 10,000 instances: a full schedule would be ~50 million entries.
    heavy = instances(10_000, max_weight=10_000)
    tracemalloc.start()
    started = time.perf_counter()
    lb = LoadBalancer.static(heavy, strategy="weighted_round_robin")
    build_ms = (time.perf_counter() - started) * 1000
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    baseline = best_ns_per_call(Bare(heavy).get_server, calls, repeats)
    ns = best_ns_per_call(lb.get_server, calls, repeats)
    total = sum(i.weight for i in heavy)
    print(f"\nweighted_round_robin, 10,000 instances, weights 1..10,000 (sum {total:,}):")
    print(
        f"  build {build_ms:.0f} ms, peak memory {peak / 2**20:.1f} MiB, "
        f"get_server {ns:.1f} ns = {ns / baseline:.2f}x"
    )


if __name__ == "__main__":
    main()
