"""Benchmark scenarios without ZooKeeper: hot-path cost, stats() beside requests, memory, threads.

Part of the report (``report.py``); each function adds its rows to a `Report`.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable

from bench_pick import acquire_release, instances
from report_model import Report
from timing import Bare

from zklb import LoadBalancer


def interleaved(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, list[float]]:
    """ns per call of each function, one short burst each per round, every round in turn."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter_ns()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter_ns() - start) / calls)
    finally:
        gc.enable()
    return times


def median_ratio(times: dict[str, list[float]], name: str) -> float:
    """The median over rounds of ``name``'s time over the bare method's time in the same round."""
    return statistics.median(t / b for t, b in zip(times[name], times["bare"], strict=True))


def hot_path(report: Report, sizes: list[int], calls: int, rounds: int) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for n in sizes:
        pool = instances(n, max_weight=10)
        fns: dict[str, Callable[[], object]] = {"bare": Bare(pool).get_server}
        for name in ("round_robin", "weighted_round_robin", "least_connections"):
            fns[f"get_server() {name}"] = LoadBalancer.static(pool, strategy=name).get_server
        for name in ("round_robin", "least_connections"):
            fns[f"acquire() {name}"] = acquire_release(LoadBalancer.static(pool, strategy=name))
            fns[f"acquire() {name}, health off"] = acquire_release(
                LoadBalancer.static(pool, strategy=name, health=None)
            )
        spread = instances(n, max_weight=10_000)
        fns["get_server() weighted_round_robin, weights 1..10,000"] = LoadBalancer.static(
            spread, strategy="weighted_round_robin"
        ).get_server
        times = interleaved(fns, calls, rounds)
        targets = {
            "get_server() round_robin": 1.5,
            "get_server() weighted_round_robin": 2.0,
            "get_server() least_connections": 2.5,
            "acquire() round_robin": 10.0,
            "acquire() least_connections": 10.0,
            "get_server() weighted_round_robin, weights 1..10,000": 2.0,
        }
        for name in fns:
            if name == "bare":
                continue
            ratio = median_ratio(times, name)
            best = min(times[name]) / min(times["bare"])  # each at its least disturbed
            curves.setdefault(name, {})[n] = ratio
            target = targets.get(name)
            report.add(
                f"hot path, n={n:,}",
                f"{name} / bare method (median of rounds; best of each)",
                f"{ratio:.2f}x ({best:.2f}x)",
                "" if target is None else f"<= {target:g}x",
                None if target is None else ratio <= target,
            )
        for name in ("round_robin", "least_connections"):
            on = times[f"acquire() {name}"]
            off = times[f"acquire() {name}, health off"]
            ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
            report.add(
                f"hot path, n={n:,}",
                f"acquire() {name}: health on / off",
                f"{ratio:.2f}",
                "1 +-10 %",
                ratio <= 1.1,
            )
    return curves


def stats_stall(report: Report, n: int, seconds: float) -> None:
    """The longest acquire() beside stats() in a loop, against beside a pure-Python loop as long."""
    lb = LoadBalancer.static(instances(n, max_weight=10))
    started = time.perf_counter()
    lb.stats()
    one_stats = time.perf_counter() - started

    def busy_loop() -> None:
        end = time.perf_counter() + one_stats
        while time.perf_counter() < end:
            pass

    def worst_acquire(beside: Callable[[], object]) -> float:
        stop = threading.Event()

        def disturb() -> None:
            while not stop.is_set():
                beside()

        thread = threading.Thread(target=disturb)
        thread.start()
        worst = 0.0
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                with lb.acquire():
                    pass
                worst = max(worst, time.perf_counter() - begin)
        finally:
            stop.set()
            thread.join()
        return worst

    beside_stats, beside_loop = [], []
    for _ in range(3):  # interleaved
        beside_stats.append(worst_acquire(lb.stats))
        beside_loop.append(worst_acquire(busy_loop))
    ratio = statistics.median(beside_stats) / statistics.median(beside_loop)
    report.add(
        f"stats() stall, n={n:,}",
        f"worst acquire() beside stats() / beside a loop as long ({one_stats * 1e3:.1f} ms)",
        f"{ratio:.2f}",
        "~1 (no lock)",
        ratio <= 1.5,
    )


def memory(report: Report, n: int) -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pool = instances(n, max_weight=10)
    payload = tracemalloc.get_traced_memory()[0] - before
    lb = LoadBalancer.static(pool, strategy="least_connections")
    with lb.acquire():
        pass
    held = tracemalloc.get_traced_memory()[0] - before - payload
    tracemalloc.stop()
    per = held / n
    report.add(
        f"memory, n={n:,}",
        "bytes held per instance beyond its ServiceInstance",
        f"{per:.0f} B",
        "<= 1024 B",
        per <= 1024,
    )
    report.add(f"memory, n={n:,}", "bytes of one ServiceInstance (the payload)", f"{payload / n:.0f} B")
    del lb


def picks_per_second(lb: LoadBalancer, count: int, seconds: float) -> float:
    """acquire() enter+exit per second, all of ``count`` threads together, for ``seconds``."""
    done = [0] * count
    stop = threading.Event()

    def work(k: int) -> None:
        picks = 0
        while not stop.is_set():
            for _ in range(100):
                with lb.acquire():
                    pass
            picks += 100
        done[k] = picks

    workers = [threading.Thread(target=work, args=(k,)) for k in range(count)]
    for t in workers:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in workers:
        t.join()
    return sum(done) / seconds


def threads(report: Report, n: int, seconds: float, rounds: int) -> dict[str, dict[int, float]]:
    """Throughput by thread count relative to one thread: the median over interleaved rounds."""
    curves: dict[str, dict[int, float]] = {}
    for name in ("round_robin", "least_connections"):
        lb = LoadBalancer.static(instances(n, max_weight=10), strategy=name)
        ratios: dict[int, list[float]] = {count: [] for count in (2, 4, 8)}
        for _ in range(rounds):
            one = picks_per_second(lb, 1, seconds)
            for count, samples in ratios.items():
                samples.append(picks_per_second(lb, count, seconds) / one)
        curves[name] = {1: 1.0} | {count: statistics.median(r) for count, r in ratios.items()}
        for count, ratio in curves[name].items():
            if count == 1:
                continue
            report.add(
                f"threads ({name}), n={n:,}",
                f"acquire() picks/s with {count} threads / with 1",
                f"{ratio:.2f}",
                ">= 0.7 (no collapse)",
                ratio >= 0.7,
            )
    return curves
