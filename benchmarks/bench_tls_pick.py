"""Cost of picking for an ``https://`` request (``acquire(tls=True)``) in pools where few instances speak TLS.

``acquire(tls=True)`` must not scan the pool: in a mixed pool it picks from a second picker over just
the TLS instances. The figures are ratios to ``acquire()`` on the same pool, in the same run, for pools
of 10 to 10,000 instances of which one in ten (and one in a hundred) has a TLS port: flat ratios as the
pool grows mean no per-request scan. Best of several repeats, garbage collector paused while timing::

    python benchmarks/bench_tls_pick.py            # add --quick for a faster, noisier run
"""

from __future__ import annotations

from collections.abc import Callable

from timing import best_ns_per_call, calls_and_repeats

from zklb import LoadBalancer, ServiceInstance

STRATEGIES = ("round_robin", "least_connections")


def mixed(n: int, every: int) -> list[ServiceInstance]:
    """``n`` instances, every ``every``-th with a TLS port."""
    return [
        ServiceInstance(
            id=f"i{k:06d}",
            host="127.0.0.1",
            port=1024 + k % 60000,
            ssl_port=(2048 + k % 60000) if k % every == 0 else None,
        )
        for k in range(n)
    ]


def acquire_release(lb: LoadBalancer, tls: bool) -> Callable[[], None]:
    acquire = lb.acquire

    def once() -> None:
        with acquire(tls=tls):
            pass

    return once


def main() -> None:
    calls, repeats = calls_and_repeats(__doc__, full=(100_000, 5), quick=(20_000, 3))

    print(f"{'strategy':<20}{'n':>7}{'TLS share':>11}{'acquire() ns':>14}{'tls=True ns':>13}{'ratio':>8}")
    for name in STRATEGIES:
        for every in (10, 100):
            for n in (10, 1_000, 10_000):
                if n < every:
                    continue
                lb = LoadBalancer.static(mixed(n, every), strategy=name)
                plain = best_ns_per_call(acquire_release(lb, False), calls, repeats)
                tls = best_ns_per_call(acquire_release(lb, True), calls, repeats)
                share = f"1/{every}"
                print(f"{name:<20}{n:>7}{share:>11}{plain:>14.1f}{tls:>13.1f}{tls / plain:>8.2f}")


if __name__ == "__main__":
    main()
