"""Benchmark scenario: churn, many joins and leaves per second among many instances, for a while.

Each reader (zklb, baseline A, baseline B) follows the same kind of churn on its own service, one after
the other: the lag from each write to the reader seeing it (p99, and how many it never saw within the
catch-up time), and the CPU seconds the watching took (the process's, less the writer thread's own).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.cache import TreeCache, TreeEvent
from kazoo.recipe.watchers import ChildrenWatch
from report_model import Report
from scenarios_zk import counted_client, encode, fill

import zklb
from zklb import LoadBalancer


class Churn:
    """Writes change k (a join of ``c{k}`` when k is even, the leave of ``c{k-1}`` when odd) at a rate,
    and records when a reader reports seeing each one."""

    def __init__(self, writer: KazooClient, path: str, service: str) -> None:
        self.writer = writer
        self.path = path
        self.service = service
        self.written: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        # Written, not yet seen: what each update checks (not every change so far, which would make
        # a reader that reports often pay for its own measurement on its update thread).
        self.pending: dict[int, None] = {}
        self.lock = threading.Lock()
        self.writer_cpu = 0.0

    def run(self, rate: float, seconds: float) -> int:
        """Write ``rate`` changes a second for ``seconds``, on this thread; returns how many."""
        total = int(rate * seconds)
        start = time.perf_counter()
        cpu = time.thread_time()
        for k in range(total):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with self.lock:
                self.written[k] = time.perf_counter()
                self.pending[k] = None
            if k % 2 == 0:
                self.writer.create_async(f"{self.path}/c{k:06d}", encode(self.service, f"c{k:06d}", 1))
            else:
                self.writer.delete_async(f"{self.path}/c{k - 1:06d}")
        self.writer_cpu = time.thread_time() - cpu
        return total

    def observe(self, present: Callable[[str], bool]) -> None:
        """A reader's view changed: record every change it now reflects (``present(name)``)."""
        now = time.perf_counter()
        with self.lock:
            pending = list(self.pending)
            for k in pending:
                name = f"c{(k if k % 2 == 0 else k - 1):06d}"
                if k in self.pending and present(name) == (k % 2 == 0):
                    self.seen[k] = now
                    del self.pending[k]
                    # A reader that batches may never show a join its leave followed at once: the
                    # join is reflected (superseded) once the leave is.
                    if k % 2 and self.pending.pop(k - 1, 0) is None:
                        self.seen[k - 1] = now

    def lags(self) -> tuple[float, int]:
        """(p99 lag in seconds over the changes seen, how many were never seen)."""
        lags = sorted(self.seen[k] - t for k, t in self.written.items() if k in self.seen)
        p99 = lags[max(0, int(len(lags) * 0.99) - 1)] if lags else float("inf")
        return p99, len(self.written) - len(lags)


#: What a reader shows now: is this name in it?
Present = Callable[[str], bool]


def follow(
    reader: str, client: KazooClient, service: str, clock: Churn
) -> tuple[Callable[[], None], list[int], Callable[[], Present]]:
    """Start ``reader`` on ``service`` reporting to ``clock``; its stop, (zklb) a snapshot count, and
    what it shows now (polled too: a join and its leave that reached it together change nothing it
    shows, so no update reports them, yet it reflects both)."""
    path = clock.path
    snapshots = [0]
    if reader.startswith("zklb"):
        lb = LoadBalancer(client, service)
        lb.start(timeout=120)
        watcher = lb._watcher
        assert watcher is not None

        def seen(m: zklb.Membership) -> None:
            snapshots[0] += 1
            clock.observe(lambda name: name in m.by_id)

        watcher.add_listener(seen)
        return lb.close, snapshots, lambda: watcher.membership.by_id.__contains__
    if reader.startswith("baseline A"):
        loaded = threading.Event()
        listed: list[frozenset[str]] = [frozenset()]

        def reread(children: list[str]) -> None:
            for child in children:
                try:
                    client.get(f"{path}/{child}")
                except NoNodeError:  # left since the list was read: as a user's code must allow
                    continue
            listed[0] = frozenset(children)
            clock.observe(listed[0].__contains__)
            loaded.set()

        ChildrenWatch(client, path, reread)
        loaded.wait(300)
        return lambda: None, snapshots, lambda: listed[0].__contains__  # the client's stop ends the watch
    ready = threading.Event()
    cache = TreeCache(client, path)

    def on_event(event: TreeEvent) -> None:
        if event.event_type == TreeEvent.INITIALIZED:
            ready.set()
        elif event.event_type in (TreeEvent.NODE_ADDED, TreeEvent.NODE_REMOVED):
            clock.observe((cache.get_children(path) or frozenset()).__contains__)

    cache.listen(on_event)
    cache.start()
    ready.wait(300)
    return cache.close, snapshots, lambda: (cache.get_children(path) or frozenset()).__contains__


def churn(report: Report, hosts: str, writer: KazooClient, n: int, *, rate: float, seconds: float) -> None:
    results: dict[str, tuple[float, int, float, str]] = {}
    for reader in ("zklb LoadBalancer", "baseline A (ChildrenWatch + get each)", "baseline B (TreeCache)"):
        service = f"churn-{n}-{os.getpid()}-{len(results)}"
        path = f"/services/{service}"
        fill(writer, path, service, n)
        clock = Churn(writer, path, service)
        with counted_client(hosts) as (client, _calls):
            stop, snapshots, showing = follow(reader, client, service, clock)
            cpu = time.process_time()
            total = clock.run(rate, seconds)
            deadline = time.perf_counter() + max(10.0, seconds)
            while len(clock.seen) < total and time.perf_counter() < deadline:
                time.sleep(0.05)
                clock.observe(showing())
            used = time.process_time() - cpu - clock.writer_cpu
            stop()
        extra = f", {snapshots[0]} snapshots for {total} changes" if reader.startswith("zklb") else ""
        p99, missed = clock.lags()
        results[reader] = (p99, missed, used, extra)
        writer.delete(path, recursive=True)
    zklb_cpu = results["zklb LoadBalancer"][2]
    for reader, (p99, missed, used, extra) in results.items():
        report.add(
            f"churn {rate:g}/s for {seconds:g} s among {n:,}",
            f"{reader}: lag p99, changes not seen in time, CPU s (/ zklb){extra}",
            f"{p99 * 1e3:.0f} ms, {missed}, {used:.2f} ({used / max(zklb_cpu, 1e-9):.1f}x)",
        )
