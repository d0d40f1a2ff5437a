"""Threads and ZooKeeper sessions for many services: one `zklb.connect()` vs a balancer per hosts string.

Starts a real ZooKeeper here, then for N services (default 20) counts the threads the process gained
and the distinct ZooKeeper sessions behind the balancers, both ways, in the same run.

    python benchmarks/bench_connections.py [--services 20] [--size 1|3]
"""

from __future__ import annotations

import argparse
import threading
import time

import zklb
from zklb import LoadBalancer
from zklb.testing import ZooKeeperEnsemble


def settled_threads() -> int:
    """Live threads once the short-lived start threads are gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(t.name.startswith(("zklb-start", "zklb-connect")) for t in threading.enumerate()):
            break
        time.sleep(0.05)
    return threading.active_count()


def sessions(balancers: list[LoadBalancer]) -> int:
    ids = set()
    for lb in balancers:
        watcher = lb._watcher
        client = None if watcher is None else watcher._client
        if client is not None and client.client_id is not None:
            ids.add(client.client_id[0])
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--size", type=int, default=1, choices=(1, 3))
    args = parser.parse_args()
    names = [f"bench-{i}" for i in range(args.services)]
    with ZooKeeperEnsemble(size=args.size) as zk:
        base = settled_threads()
        separate = [LoadBalancer(zk.hosts, name).start() for name in names]
        separate_threads = settled_threads() - base
        separate_sessions = sessions(separate)
        for lb in separate:
            lb.close()
        time.sleep(0.5)
        base = settled_threads()
        with zklb.connect(zk.hosts) as discovery:
            shared = [discovery.balancer(name).start() for name in names]
            shared_threads = settled_threads() - base
            shared_sessions = sessions(shared)
    print(f"{args.services} services")
    print(
        f"  a LoadBalancer per hosts string: {separate_sessions:3d} sessions, {separate_threads:3d} threads"
    )
    print(f"  one zklb.connect():              {shared_sessions:3d} sessions, {shared_threads:3d} threads")
    print(f"  ratio (threads): {separate_threads / max(shared_threads, 1):.1f}x fewer through one connection")


if __name__ == "__main__":
    main()
