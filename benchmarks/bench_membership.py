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

from zklb import Membership, ServiceInstance, ServiceWatcher
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


def measure_zklb(
    hosts: str, writer: KazooClient, service: str, base: int, changes: int
) -> tuple[list[float], float]:
    path = f"/services/{service}"
    fill(writer, path, service, base)
    target = [base]
    arrived = threading.Event()

    def listener(m: Membership) -> None:
        if len(m) >= target[0]:
            arrived.set()

    latencies = []
    with ServiceWatcher(hosts, service) as watcher:
        watcher.add_listener(listener)
        reads_before = watcher.read_count
        for i in range(changes):
            target[0] = base + i + 1
            arrived.clear()
            data = codec.encode(service, ServiceInstance.parse("http://10.9.0.1:80", id=f"j{i}"))
            start = time.perf_counter()
            writer.create(f"{path}/j{i:05d}", data)
            if not arrived.wait(10):
                raise TimeoutError("zklb listener not called")
            latencies.append(time.perf_counter() - start)
        reads_per_change = (watcher.read_count - reads_before) / changes
    return latencies, reads_per_change


def measure_kazoo(hosts: str, writer: KazooClient, service: str, base: int, changes: int) -> list[float]:
    path = f"/services/{service}"
    fill(writer, path, service, base)
    target = [base]
    arrived = threading.Event()

    def on_children(children: list[str]) -> None:
        if len(children) >= target[0]:
            arrived.set()

    reader = KazooClient(hosts=hosts)
    reader.start(timeout=30)
    latencies = []
    try:
        ChildrenWatch(reader, path, on_children)
        for i in range(changes):
            target[0] = base + i + 1
            arrived.clear()
            data = codec.encode(service, ServiceInstance.parse("http://10.9.0.1:80", id=f"k{i}"))
            start = time.perf_counter()
            writer.create(f"{path}/k{i:05d}", data)
            if not arrived.wait(10):
                raise TimeoutError("ChildrenWatch not called")
            latencies.append(time.perf_counter() - start)
    finally:
        reader.stop()
        reader.close()
    return latencies


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
