"""Benchmark scenario: fan-out, many watching clients on one service, and the reconnect storm.

Each watching client has its own kazoo client (its own ZooKeeper session and connection), as each of
that many processes would; they run as threads of this one process, a stand-in for the processes (the
ZooKeeper side sees the same sessions and requests). Requests are counted at the kazoo level: every
request a client sends through ``KazooClient._call`` (reads, exists, writes, and the ``SetWatches``
zklb sends after a reconnect; kazoo sends none itself), with its time. Not counted, for every reader
alike: the connect handshake and pings. (The servers' ``mntr`` counters cannot tell one client from
another, and a restarted member's counters start again from zero.)

Every client connects to the first member of the hosts string (``randomize_hosts=False``; an
ensemble's ``hosts`` lists member 0 first); stopping that member makes
every client reconnect to another one at once: the reconnect storm. The readers are zklb
`ServiceWatcher` with its default jittered re-sync (``resync_delay=1``), the same with
``resync_delay=0`` (no jitter), and baseline A (``ChildrenWatch`` + a ``get()`` of every child).

``benchmarks/report.py`` runs it with the other scenarios; alone, on a 3-node ensemble started here::

    python benchmarks/scenario_fanout.py --clients 200 --instances 100 --changes 10
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch
from report_model import Report
from scenarios_zk import encode, fill

from zklb import ServiceWatcher
from zklb.testing import ZooKeeperEnsemble

READERS = ("zklb, resync_delay=1 (jitter)", "zklb, resync_delay=0 (no jitter)", "baseline A")
STORM_WINDOW = 5.0
BUCKET = 0.1  # the peak rate of the storm is the most requests in one such slice of time


class Fleet:
    """``size`` readers of one kind, each on its own counted kazoo client; `sees` tells which child
    names each of them currently lists."""

    def __init__(self, hosts: str, kind: str, service: str, path: str, size: int) -> None:
        self.times: list[float] = []  # when each request was sent (list.append is atomic)
        self.clients = [KazooClient(hosts=hosts, timeout=10, randomize_hosts=False) for _ in range(size)]
        for client in self.clients:
            self._count(client)
        for started in [client.start_async() for client in self.clients]:
            started.wait(60)
        self.watchers: list[ServiceWatcher] = []
        self.lists: list[frozenset[str]] = [frozenset()] * size
        if kind.startswith("zklb"):
            delay = 0.0 if "=0" in kind else 1.0
            for client in self.clients:
                self.watchers.append(ServiceWatcher(client, service, resync_delay=delay).start(timeout=60))
        else:
            for i, client in enumerate(self.clients):
                self._children_watch(client, path, i)

    def _count(self, client: KazooClient) -> None:
        send = client._call
        times = self.times

        def counting(request: object, async_object: object) -> object:
            times.append(time.perf_counter())
            return send(request, async_object)

        client._call = counting

    def _children_watch(self, client: KazooClient, path: str, i: int) -> None:
        def reread(children: list[str]) -> None:
            for child in children:
                try:
                    client.get(f"{path}/{child}")
                except NoNodeError:  # left since the list was read
                    continue
            self.lists[i] = frozenset(children)

        ChildrenWatch(client, path, reread)

    def sees(self) -> list[frozenset[str]]:
        if self.watchers:
            return [frozenset(w.membership.by_id) for w in self.watchers]
        return list(self.lists)

    def wait(self, done: Callable[[frozenset[str]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(map(done, self.sees())):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.close()
        for client in self.clients:
            client.stop()
            client.close()


def shows(key: str, present: bool, names: frozenset[str]) -> bool:
    return (key in names) == present


def fanout(
    report: Report,
    hosts: str,
    writer: KazooClient,
    *,
    clients: int,
    n: int,
    changes: int,
    ensemble: ZooKeeperEnsemble | None,
) -> None:
    """``clients`` readers of one service of ``n`` instances: requests per change (``changes`` joins
    and leaves, one at a time), then (given the ``ensemble``) the storm when member 0 restarts."""
    scenario = f"fan-out, {clients} clients, n={n:,}"
    per_change: dict[str, float] = {}
    for number, kind in enumerate(READERS):
        service = f"fanout-{n}-{os.getpid()}-{number}"
        path = f"/services/{service}"
        fill(writer, path, service, n)
        fleet = Fleet(hosts, kind, service, path, clients)
        try:
            if not fleet.wait(lambda names: len(names) == n, 120):
                raise RuntimeError(f"{kind}: the fleet did not load {n} instances")
            before = len(fleet.times)
            for k in range(changes):
                key = f"f{k // 2:06d}"
                if k % 2 == 0:
                    writer.create(f"{path}/{key}", encode(service, key, 1))
                else:
                    writer.delete(f"{path}/{key}")
                present = k % 2 == 0
                if not fleet.wait(functools.partial(shows, key, present), 60):
                    raise RuntimeError(f"{kind}: change {k} not seen by every client")
            per_change[kind] = (len(fleet.times) - before) / changes
            report.add(
                scenario,
                f"{kind}: ZooKeeper requests per change, all clients (per client)",
                f"{per_change[kind]:,.0f} ({per_change[kind] / clients:.2f})",
                "",
            )
            if ensemble is not None:
                storm(report, scenario, kind, fleet, ensemble, n=n)
        finally:
            fleet.close()
            writer.delete(path, recursive=True)
    if ensemble is None:
        report.add(scenario, "reconnect storm", "not run (--hosts: no member to restart)")


def storm(
    report: Report, scenario: str, kind: str, fleet: Fleet, ensemble: ZooKeeperEnsemble, *, n: int
) -> None:
    """Restart member 0 (every client's): requests in the first `STORM_WINDOW` seconds and the peak."""
    before = len(fleet.times)
    begin = time.perf_counter()
    ensemble.stop_member(0)
    # A measurement window, not a wait for a condition: the storm is what happens in it.
    time.sleep(max(0.0, begin + STORM_WINDOW - time.perf_counter()))
    sent = [t - begin for t in fleet.times[before:] if t - begin <= STORM_WINDOW]
    buckets: dict[int, int] = {}
    for t in sent:
        buckets[int(t / BUCKET)] = buckets.get(int(t / BUCKET), 0) + 1
    connected = sum(client.connected for client in fleet.clients)
    ensemble.start_member(0, wait=True, timeout=120)
    intact = fleet.wait(lambda names: len(names) == n, 30)
    report.add(
        scenario,
        f"{kind}: storm when the member restarts: requests in {STORM_WINDOW:g} s, "
        f"peak per {BUCKET * 1e3:.0f} ms, clients reconnected"
        + ("" if intact else ", pool NOT intact after"),
        f"{len(sent):,}, {max(buckets.values(), default=0):,}, {connected}/{len(fleet.clients)}",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args(argv)
    with ZooKeeperEnsemble(size=3) as ensemble:
        writer = KazooClient(hosts=ensemble.hosts, timeout=30)
        writer.start(timeout=30)
        try:
            fanout(
                Report(),
                ensemble.hosts,
                writer,
                clients=args.clients,
                n=args.instances,
                changes=args.changes,
                ensemble=ensemble,
            )
        finally:
            writer.stop()
            writer.close()


if __name__ == "__main__":
    main()
