"""Membership-change latency: a create in one client to the listener call in another.

Compares zklb's ServiceWatcher with raw kazoo ``ChildrenWatch`` (names only, no data read) in the same
run, against a real ZooKeeper started here, at two pool sizes; also prints ZooKeeper reads per change.

    python benchmarks/bench_membership.py [--size 1|3] [--changes 200]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from kazoo.client import KazooClient
from kazoo.recipe.watchers import ChildrenWatch

from zklb import ServiceInstance, ServiceWatcher
from zklb.codecs.curator import CuratorCodec
from zklb.testing import ZooKeeperEnsemble

codec = CuratorCodec()


def fill(writer: KazooClient, path: str, service: str, count: int) -> None:
    writer.ensure_path(path)
    pending = [
        writer.create_async(
            f"{path}/base{i:05d}",
            codec.encode(
                service, ServiceInstance.parse(f"http://10.1.{i // 250}.{i % 250 + 1}:80", id=f"b{i}")
            ),
        )
        for i in range(count)
    ]
    for result in pending:
        result.get(timeout=30)


class JoinClock:
    """Times joins: a create by ``writer`` until a reader reports a pool of the expected size."""

    def __init__(self, writer: KazooClient, service: str, base: int) -> None:
        self.writer = writer
        self.service = service
        self.path = f"/services/{service}"
        self.expected = base
        self.arrived = threading.Event()
        fill(writer, self.path, service, base)

    def seen(self, size: int) -> None:
        """What a reader calls with the pool size it now sees (on any thread)."""
        if size >= self.expected:
            self.arrived.set()

    def run(self, changes: int) -> list[float]:
        latencies = []
        for i in range(changes):
            self.expected += 1
            self.arrived.clear()
            data = codec.encode(self.service, ServiceInstance.parse("http://10.9.0.1:80", id=f"j{i}"))
            start = time.perf_counter()
            self.writer.create(f"{self.path}/j{i:05d}", data)
            if not self.arrived.wait(10):
                raise TimeoutError(f"no reader saw join {i} of {self.service}")
            latencies.append(time.perf_counter() - start)
        return latencies


def measure_zklb(
    hosts: str, writer: KazooClient, service: str, base: int, changes: int
) -> tuple[list[float], float]:
    clock = JoinClock(writer, service, base)
    with ServiceWatcher(hosts, service) as watcher:
        watcher.add_listener(lambda m: clock.seen(len(m)))
        reads_before = watcher.read_count
        latencies = clock.run(changes)
        reads_per_change = (watcher.read_count - reads_before) / changes
    return latencies, reads_per_change


def measure_kazoo(hosts: str, writer: KazooClient, service: str, base: int, changes: int) -> list[float]:
    clock = JoinClock(writer, service, base)
    reader = KazooClient(hosts=hosts)
    reader.start(timeout=30)
    try:
        ChildrenWatch(reader, clock.path, lambda children: clock.seen(len(children)))
        return clock.run(changes)
    finally:
        reader.stop()
        reader.close()


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p90 = ms[int(len(ms) * 0.9) - 1]
    return f"median {statistics.median(ms):6.2f} ms  p90 {p90:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=3, help="ZooKeeper ensemble size")
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    with ZooKeeperEnsemble(size=args.size) as ensemble:
        writer = KazooClient(hosts=ensemble.hosts)
        writer.start(timeout=30)
        try:
            print(f"ZooKeeper: {args.size} member(s); {args.changes} joins per row\n")
            for base in (10, 1000):
                kazoo = measure_kazoo(ensemble.hosts, writer, f"kazoo-{base}", base, args.changes)
                zklb, reads = measure_zklb(ensemble.hosts, writer, f"zklb-{base}", base, args.changes)
                ratio = statistics.median(zklb) / statistics.median(kazoo)
                print(f"pool of {base:5d}: kazoo ChildrenWatch {summary(kazoo)}")
                print(
                    f"               zklb ServiceWatcher  {summary(zklb)}  ratio {ratio:.2f}x  "
                    f"reads/change {reads:.2f}"
                )
        finally:
            writer.stop()
            writer.close()


if __name__ == "__main__":
    main()
