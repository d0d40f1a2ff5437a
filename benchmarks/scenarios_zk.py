"""Benchmark scenarios on a real ZooKeeper: initial load and one change among many, each against a
raw kazoo read and the two baselines a user would write instead (``report.py`` says which).

Requests are counted on each reader's own kazoo client (every request goes through its ``_call``).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kazoo.client import KazooClient
from kazoo.recipe.cache import TreeCache, TreeEvent
from kazoo.recipe.watchers import ChildrenWatch
from report_model import Report

import zklb
from zklb import LoadBalancer, ServiceInstance
from zklb.codecs.curator import CuratorCodec

codec = CuratorCodec()


@contextmanager
def counted_client(hosts: str) -> Iterator[tuple[KazooClient, Counter[str]]]:
    """A started kazoo client that counts the requests it sends, by kind."""
    client = KazooClient(hosts=hosts, timeout=30)
    client.start(timeout=30)
    calls: Counter[str] = Counter()
    send = client._call

    def counting(request: object, async_object: object) -> object:
        calls[type(request).__name__] += 1
        return send(request, async_object)

    client._call = counting
    try:
        yield client, calls
    finally:
        client.stop()
        client.close()


def fill(writer: KazooClient, path: str, service: str, count: int) -> None:
    writer.ensure_path(path)
    for start in range(0, count, 2000):
        pending = [
            writer.create_async(f"{path}/i{i:06d}", encode(service, f"i{i:06d}", 1))
            for i in range(start, min(count, start + 2000))
        ]
        for result in pending:
            result.get(timeout=60)


def encode(service: str, key: str, weight: int) -> bytes:
    number = int(key[1:]) if key[1:].isdigit() else 0
    instance = ServiceInstance(
        id=key,
        host=f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}",
        port=80,
        weight=weight,
    )
    return codec.encode(service, instance)


def initial_load(report: Report, hosts: str, writer: KazooClient, n: int) -> None:
    service = f"load-{n}-{os.getpid()}"
    path = f"/services/{service}"
    fill(writer, path, service, n)
    results: dict[str, tuple[float, int]] = {}

    with counted_client(hosts) as (client, calls):
        begin = time.perf_counter()
        children = client.get_children(path)
        for result in [client.get_async(f"{path}/{c}") for c in children]:
            result.get(timeout=60)
        results["raw pipelined get_async"] = (time.perf_counter() - begin, sum(calls.values()))

    with counted_client(hosts) as (client, calls):
        begin = time.perf_counter()
        lb = LoadBalancer(client, service)
        lb.start(timeout=120)
        results["zklb LoadBalancer.start()"] = (time.perf_counter() - begin, sum(calls.values()))
        assert len(lb.servers()) == n
        lb.close()

    with counted_client(hosts) as (client, calls):
        loaded = threading.Event()
        begin = time.perf_counter()

        def reread(children: list[str]) -> None:
            for child in children:
                client.get(f"{path}/{child}")
            loaded.set()

        ChildrenWatch(client, path, reread)
        loaded.wait(300)
        results["baseline A (ChildrenWatch + get each)"] = (time.perf_counter() - begin, sum(calls.values()))

    with counted_client(hosts) as (client, calls):
        ready = threading.Event()
        begin = time.perf_counter()
        cache = TreeCache(client, path)
        cache.listen(lambda event: ready.set() if event.event_type == TreeEvent.INITIALIZED else None)
        cache.start()
        ready.wait(300)
        results["baseline B (TreeCache)"] = (time.perf_counter() - begin, sum(calls.values()))
        cache.close()

    raw_time, _ = results["raw pipelined get_async"]
    for name, (took, requests) in results.items():
        ratio = took / raw_time
        target = "<= 1.2x" if name.startswith("zklb") else ""
        report.add(
            f"initial load, n={n:,}",
            f"{name}: time / raw ({took * 1e3:.0f} ms), requests",
            f"{ratio:.2f}x, {requests:,}",
            target,
            ratio <= 1.2 if target else None,
        )
    writer.delete(path, recursive=True)


def one_change(report: Report, hosts: str, writer: KazooClient, n: int, changes: int) -> None:
    """Joins, leaves and weight changes among n, one at a time: time to be seen, requests per change."""
    service = f"change-{n}-{os.getpid()}"
    path = f"/services/{service}"
    fill(writer, path, service, n)
    plan = [("join", "leave", "weight")[k % 3] for k in range(changes)]

    def write(kind: str, k: int) -> None:
        key = f"x{k // 3:06d}"
        if kind == "join":
            writer.create(f"{path}/{key}", encode(service, key, 1))
        elif kind == "leave":
            writer.delete(f"{path}/{key}")
        else:
            writer.set(f"{path}/i000000", encode(service, "i000000", 2 + k))

    # The raw notification: one-shot kazoo watches on the child list and on the changed node.
    raw: list[float] = []
    with counted_client(hosts) as (client, _calls):
        for k, kind in enumerate(plan):
            fired = threading.Event()
            if kind == "weight":
                client.get(f"{path}/i000000", watch=lambda event, fired=fired: fired.set())
            else:
                client.get_children(path, watch=lambda event, fired=fired: fired.set())
            begin = time.perf_counter()
            write(kind, k)
            fired.wait(30)
            raw.append(time.perf_counter() - begin)

    seen: list[float] = []
    with counted_client(hosts) as (client, calls):
        lb = LoadBalancer(client, service)
        lb.start(timeout=120)
        before = sum(calls.values())
        for k, kind in enumerate(plan):
            predicate = expectation(kind, k)
            begin = time.perf_counter()
            write(kind, k)
            lb.wait_for(predicate, 30)
            seen.append(time.perf_counter() - begin)
        per_change = (sum(calls.values()) - before) / len(plan)
        lb.close()

    # Baseline A only sees joins and leaves (no data watches): time until it has re-read every child.
    base_a: list[float] = []
    with counted_client(hosts) as (client, calls):
        reread = threading.Event()

        def on_children(children: list[str]) -> None:
            for child in children:
                client.get(f"{path}/{child}")
            reread.set()

        ChildrenWatch(client, path, on_children)
        reread.wait(300)
        before_a = sum(calls.values())
        membership_changes = [k for k, kind in enumerate(plan) if kind != "weight"]
        offset = len(plan)
        for j, kind in enumerate(["join", "leave"] * max(1, len(membership_changes) // 4)):
            reread.clear()
            begin = time.perf_counter()
            write(kind, 3 * (offset + j // 2) + (0 if kind == "join" else 1))
            reread.wait(300)
            base_a.append(time.perf_counter() - begin)
        per_change_a = (sum(calls.values()) - before_a) / len(base_a)

    median_raw = statistics.median(raw)
    ratio = statistics.median(seen) / median_raw
    p99 = sorted(seen)[max(0, int(len(seen) * 0.99) - 1)]
    report.add(
        f"one change among {n:,}",
        "zklb ZooKeeper requests per change",
        f"{per_change:.2f}",
        "<= 3",
        per_change <= 3,
    )
    report.add(
        f"one change among {n:,}",
        f"zklb write -> get_server() sees it / raw watch (median {median_raw * 1e3:.1f} ms)",
        f"{ratio:.2f}x",
        "<= 1.5x",
        ratio <= 1.5,
    )
    report.add(
        f"one change among {n:,}",
        "zklb p99 / raw p99",
        f"{p99 / sorted(raw)[max(0, int(len(raw) * 0.99) - 1)]:.2f}x",
    )
    report.add(f"one change among {n:,}", "baseline A requests per join/leave", f"{per_change_a:,.0f}")
    report.add(
        f"one change among {n:,}",
        "baseline A join/leave -> re-read / raw watch",
        f"{statistics.median(base_a) / median_raw:.2f}x",
    )
    writer.delete(path, recursive=True)


def expectation(kind: str, k: int) -> Callable[[zklb.Membership], bool]:
    """What the pool looks like once change ``k`` (of ``kind``) is seen."""
    key = f"x{k // 3:06d}"

    def seen(m: zklb.Membership) -> bool:
        if kind == "join":
            return key in m.by_id
        if kind == "leave":
            return key not in m.by_id
        return m.by_id["i000000"].weight == 2 + k

    return seen
