"""What the pick benchmarks share: the yardstick method, a best-of-N timer and the ``--quick`` switch."""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence

from zklb import ServiceInstance


class Bare:
    """The yardstick: the cheapest round robin one would write in Python."""

    def __init__(self, servers: Sequence[ServiceInstance]) -> None:
        self.servers = servers
        self.i = 0

    def get_server(self) -> ServiceInstance:
        i = self.i
        self.i = i + 1
        s = self.servers
        return s[i % len(s)]


def calls_and_repeats(doc: str | None, *, full: tuple[int, int], quick: tuple[int, int]) -> tuple[int, int]:
    """Parse the command line (``--quick``: fewer calls and repeats); ``(calls, repeats)`` to time with."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    return quick if parser.parse_args().quick else full


def best_ns_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Best-of-``repeats`` time per call, in ns, over ``calls`` calls (unrolled by 10), GC paused."""
    best = float("inf")
    rounds = range(calls // 10)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in rounds:
                fn()
                fn()
                fn()
                fn()
                fn()
                fn()
                fn()
                fn()
                fn()
                fn()
            best = min(best, (time.perf_counter_ns() - start) / (len(rounds) * 10))
    finally:
        if gc_was_enabled:
            gc.enable()
    return best
