"""Draw docs/strategies.png: how each strategy spreads requests over a skewed pool, from a real run.

The pool: six instances, ``heavy`` of weight 5, ``slow`` taking ten times as long as the others to
answer, and four ordinary ones. The workload: 20,000 requests arriving at random (Poisson) at a rate
that keeps about 24 in flight, each through ``lb.acquire()`` on a real `LoadBalancer.static` with the
strategy, held for its instance's service time on a simulated clock, and released with that latency
reported (so that latency-aware strategies see it). Keys for ``consistent_hash`` are 1,000 users.
Needs the ``plots`` extra (matplotlib: ``pip install -e '.[plots]'``)::

    python docs/plot_strategies.py            # writes docs/strategies.png and prints the table
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from zklb import LoadBalancer, PeakEwma, ServiceInstance

STRATEGIES = (
    "round_robin",
    "weighted_round_robin",
    "random",
    "weighted_random",
    "least_connections",
    "power_of_two_choices",
    "least_request",
    "peak_ewma",
    "consistent_hash",
)
NAMES = ("heavy (w=5)", "slow (10x)", "a", "b", "c", "d")
WEIGHTS = (5, 1, 1, 1, 1, 1)
SERVICE_TIME = (0.02, 0.2, 0.02, 0.02, 0.02, 0.02)  # seconds
REQUESTS = 20_000
RATE = 24 / 0.03  # arrivals per second: about 24 in flight at an ordinary service time


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(strategy: str, seed: int = 1) -> Counter[int]:
    """Send REQUESTS through a balancer with ``strategy``; how many each instance got."""
    rng = random.Random(seed)
    clock = Clock()
    pool = [
        ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, weight=w) for k, w in enumerate(WEIGHTS)
    ]
    chosen = PeakEwma(clock=clock, rng=random.Random(seed)) if strategy == "peak_ewma" else strategy
    lb = LoadBalancer.static(pool, strategy=chosen, health=None, clock=clock)
    ends: list[tuple[float, int, object]] = []
    counts: Counter[int] = Counter()
    for n in range(REQUESTS):
        clock.now += rng.expovariate(RATE)
        while ends and ends[0][0] <= clock.now:
            end, _, lease = heapq.heappop(ends)
            finish(lb, lease, end, clock)
        key = f"user-{rng.randrange(1000)}" if strategy == "consistent_hash" else None
        lease = lb.acquire(key=key)
        k = lease.server.port - 8000
        counts[k] += 1
        took = SERVICE_TIME[k] * rng.uniform(0.5, 1.5)
        heapq.heappush(ends, (clock.now + took, n, (lease, took)))
    for end, _, lease in sorted(ends):
        finish(lb, lease, end, clock)
    return counts


def finish(lb: LoadBalancer, item: object, end: float, clock: Clock) -> None:
    lease, took = item  # type: ignore[misc]
    clock.now = max(clock.now, end)
    lb.report(lease.server, success=True, latency=took)  # the simulated latency, as a sample
    lease.cancel()  # ends the request (its measured wall-clock latency would be the simulator's)


def main() -> None:
    shares = {name: run(name) for name in STRATEGIES}
    print(f"{'strategy':<22}" + "".join(f"{n:>13}" for n in NAMES))
    for name, counts in shares.items():
        print(f"{name:<22}" + "".join(f"{counts[k] / REQUESTS:>13.1%}" for k in range(len(NAMES))))
    fig, ax = plt.subplots(figsize=(11, 4.6))
    width = 0.8 / len(NAMES)
    for k, label in enumerate(NAMES):
        xs = [i + (k - (len(NAMES) - 1) / 2) * width for i in range(len(STRATEGIES))]
        ax.bar(xs, [shares[s][k] / REQUESTS * 100 for s in STRATEGIES], width, label=label)
    ax.set_xticks(range(len(STRATEGIES)), [s.replace("_", "\n") for s in STRATEGIES], fontsize=8)
    ax.set_ylabel("share of requests (%)")
    ax.set_title("Picks per instance: one of weight 5, one ten times slower, four ordinary (20,000 requests)")
    ax.legend(ncol=6, fontsize=8, loc="upper center")
    ax.set_ylim(0, 70)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(__file__).with_name("strategies.png")
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
