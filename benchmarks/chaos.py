"""Chaos: a minute of mixed faults against a real ZooKeeper ensemble and real HTTP servers under load.

Three ZooKeeper members and three HTTP backends on 127.0.0.1. The backends are registered through a
`Registry` on a kazoo client of their own (the "servers"; reconnect backoff capped at 2 s as zklb caps
its own clients'); the client side is a ``LoadBalancer(hosts, service)`` (which makes its own kazoo
client) and an ``httpx.Client(transport=LoadBalancedTransport(lb))``, every zklb setting at its default.
``--kazoo-defaults`` puts the registrar and the balancer on plain ``KazooClient(hosts)`` instead.
Worker threads send GETs without stopping while a scheduler (in ``_chaos_faults.py``, with the backends:
`zklb.testing.HTTPBackend` servers) runs faults one after the other:

- **leader kill**: SIGKILL the ZooKeeper leader, wait for a new one, later restart the member;
- **backend kill**: kill one HTTP backend (listener closed, connections cut), time until the balancer
  ejects it, then restart it on the same port;
- **session expiry**: expire the registrar's ZooKeeper session (its znodes go; the Registry re-creates them);
- **full outage**: stop every ZooKeeper member for a few seconds, then start them all again.

After each recovery a spare backend is registered and then deregistered, and the time until the
balancer's ``lb.membership`` shows each change is taken (from the start of the ``register()`` /
``close()`` call). At the end a fresh, synced kazoo client checks that every registration that should be
in ZooKeeper is there. Then everything is closed, and threads and open file descriptors are counted
again. Run::

    python benchmarks/chaos.py                 # about a minute of faults
    python benchmarks/chaos.py --quick         # about 20 s, every kind of fault once
    python benchmarks/chaos.py --seconds 120 --workers 8

Progress is printed as the faults happen, then one table: requests sent, failed (an exception or a 5xx
reaching the caller), retried (requests that needed more than one attempt, counted by a pass-through
wrapper around httpx's default inner transport), the longest time to eject and to converge, registrations
lost, and threads and file descriptors before and after. zklb's own warnings and errors follow the table.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import logging
import os
import threading
import time

import httpx
from _chaos_faults import SERVICE, ZK_SERVING_TIMEOUT, ZK_START_TIMEOUT, Backend, Chaos, Findings
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from zklb import LoadBalancer, Registry
from zklb.httpx import LoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble

ROOT = "/services"
SERVICE_PATH = f"{ROOT}/{SERVICE}"
URL = f"http://{SERVICE}/"

#: Deadlines: every wait of the scenario ends by itself (those of the faults are in _chaos_faults.py).
JOIN_TIMEOUT = 15.0
SETTLE_TIMEOUT = 5.0


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- load


class _AttemptCount(threading.local):
    count = 0


_attempts = _AttemptCount()


class CountingTransport(httpx.BaseTransport):
    """httpx's default transport, counting the attempts of the current thread's request (retries show)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _attempts.count += 1
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclasses.dataclass
class Load:
    """What the worker threads saw; updated under ``lock``."""

    started: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    sent: int = 0
    failed: int = 0
    retried: int = 0
    extra_attempts: int = 0
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    first_failures: list[str] = dataclasses.field(default_factory=list)
    phase: str = "warm-up"  # the fault in progress (set by the scheduler), to which failures are charged
    by_phase: dict[str, tuple[int, float, float]] = dataclasses.field(default_factory=dict)
    _seen: set[str] = dataclasses.field(default_factory=set)

    def record(self, attempts: int, failure: str | None) -> None:
        with self.lock:
            self.sent += 1
            if attempts > 1:
                self.retried += 1
                self.extra_attempts += attempts - 1
            if failure is not None:
                self.failed += 1
                self.failures[failure.split(":", 1)[0]] += 1
                now = time.monotonic() - self.started
                count, first, _ = self.by_phase.get(self.phase, (0, now, now))
                self.by_phase[self.phase] = (count + 1, first, now)
                # The first of each kind in each fault, for a diagnosis; not thousands of the same line.
                seen = f"{self.phase}: {failure}"
                if len(self.first_failures) < 10 and seen not in self._seen:
                    self._seen.add(seen)
                    self.first_failures.append(f"+{now:.2f}s ({self.phase}) {failure}")


def send_loop(client: httpx.Client, load: Load, stop: threading.Event, deadline: float, pause: float) -> None:
    """One worker: GET after GET until ``stop`` is set or ``deadline`` passes."""
    while not stop.is_set() and time.monotonic() < deadline:
        _attempts.count = 0
        failure = None
        try:
            response = client.get(URL)
            if response.status_code >= 500:
                failure = f"HTTP {response.status_code}"
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        load.record(_attempts.count, failure)
        if pause > 0:
            stop.wait(pause)


@dataclasses.dataclass
class PoolWatch:
    """What a sampler saw of ``lb.pool_stats()`` during the run."""

    min_size: int | None = None
    max_ejected: int = 0
    panic: bool = False
    connections: set[str] = dataclasses.field(default_factory=set)


def watch_pool(lb: LoadBalancer, seen: PoolWatch, stop: threading.Event, deadline: float) -> None:
    while not stop.wait(0.05) and time.monotonic() < deadline:
        stats = lb.pool_stats()
        seen.min_size = stats.size if seen.min_size is None else min(seen.min_size, stats.size)
        seen.max_ejected = max(seen.max_ejected, stats.ejected)
        seen.panic |= stats.panic
        seen.connections.add(stats.connection)


class LogCollector(logging.Handler):
    """Keeps WARNING and above, so that the library's notices do not break up the printed table."""

    def __init__(self, started: float) -> None:
        super().__init__(logging.WARNING)
        self.wall_start = time.time() - (time.monotonic() - started)
        self.lines: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name.split('.')[0]} {record.levelname}"] += 1
        if record.name.startswith("zklb"):
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            elapsed = record.created - self.wall_start
            self.lines.append(f"+{elapsed:5.1f}s {record.levelname:<7} {record.name}: {message}")


def make_client(hosts: str, kazoo_defaults: bool) -> KazooClient:
    """A started kazoo client for the registrar (or, with --kazoo-defaults, the balancer too).

    kazoo's default reconnect backoff doubles up to an hour, so after a long outage a client may wait
    many seconds before it even tries again; zklb's own clients cap it at 2 s, and so does this one
    unless ``kazoo_defaults``.
    """
    if kazoo_defaults:
        client = KazooClient(hosts=hosts)
    else:
        retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0)
        client = KazooClient(hosts=hosts, connection_retry=retry)
    client.start(timeout=ZK_SERVING_TIMEOUT)
    return client


def znodes_in_zookeeper(hosts: str) -> set[str]:
    """The service's children as a fresh client sees them after a sync."""
    client = KazooClient(hosts=hosts)
    client.start(timeout=ZK_SERVING_TIMEOUT)
    try:
        client.sync_async(SERVICE_PATH).get(timeout=ZK_SERVING_TIMEOUT)
        return set(client.get_children_async(SERVICE_PATH).get(timeout=ZK_SERVING_TIMEOUT))
    finally:
        client.stop()
        client.close()


def settle(threads: int, fds: int) -> tuple[int, int]:
    """Threads and fds once they stop falling towards the counts before (a thread may still be ending)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        gc.collect()
        now = threading.active_count(), fd_count()
        if (now[0] <= threads and now[1] <= fds) or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass
class Outcome:
    load: Load
    findings: Findings
    pool: PoolWatch
    lost: set[str]
    unexpected: set[str]
    denied: int
    elapsed: float


def run(args: argparse.Namespace, started: float) -> Outcome:
    ensemble = ZooKeeperEnsemble(size=3)
    backends: list[Backend] = []
    clients: list[KazooClient] = []
    registry: Registry | None = None
    lb: LoadBalancer | None = None
    http: httpx.Client | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        ensemble.start(timeout=ZK_START_TIMEOUT)
        backends.extend(Backend(f"b{i}") for i in range(3))
        spare = Backend("spare")
        backends.append(spare)
        registrar = make_client(ensemble.hosts, args.kazoo_defaults)
        clients.append(registrar)
        registry = Registry(registrar)
        registrations = [registry.register(SERVICE, b.url) for b in backends[:3]]
        if args.kazoo_defaults:
            watcher = make_client(ensemble.hosts, kazoo_defaults=True)
            clients.append(watcher)
            lb = LoadBalancer(watcher, SERVICE)
        else:
            lb = LoadBalancer(ensemble.hosts, SERVICE)  # zklb makes (and stops) its own client
        lb.start(timeout=ZK_SERVING_TIMEOUT)
        transport = LoadBalancedTransport(lb, transport=CountingTransport())
        http = httpx.Client(transport=transport)
        print(
            f"ZooKeeper: 3 members at {ensemble.hosts}; backends: "
            f"{', '.join(b.url for b in backends[:3])} (spare {spare.url}); {args.workers} client threads\n",
            flush=True,
        )

        load = Load(started=started)
        chaos = Chaos(
            ensemble=ensemble,
            registrar=registrar,
            registry=registry,
            registrations=registrations,
            backends=backends[:3],
            spare=spare,
            lb=lb,
            started=started,
            outage=args.outage,
            backend_down=args.backend_down,
        )
        pool = PoolWatch()
        hard_deadline = time.monotonic() + max(3 * args.seconds, args.seconds + 240)
        for i in range(args.workers):
            threads.append(
                threading.Thread(
                    target=send_loop,
                    args=(http, load, stop, hard_deadline, args.pause),
                    name=f"chaos-load-{i}",
                )
            )
        threads.append(
            threading.Thread(target=watch_pool, args=(lb, pool, stop, hard_deadline), name="chaos-pool")
        )
        for thread in threads:
            thread.start()

        scenario_start = time.monotonic()
        chaos.say("load running; faults begin")
        time.sleep(args.warmup)
        faults = [chaos.leader_kill, chaos.backend_kill, chaos.session_expiry, chaos.full_outage]
        done = 0
        # Every kind once, then round again while time is left.
        while done < len(faults) or time.monotonic() - scenario_start < args.seconds:
            fault = faults[done % len(faults)]
            load.phase = f"{fault.__name__.replace('_', ' ')} #{done // len(faults) + 1}"
            try:
                fault()
            except Exception as exc:  # the ensemble or a backend is in an unknown state: stop faulting
                chaos.anomaly(f"{fault.__name__} failed, scenario cut short: {exc!r}")
                break
            done += 1
            time.sleep(args.gap)
        elapsed = time.monotonic() - scenario_start
        load.phase = "after the faults"
        chaos.say("faults over; stopping the load")
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            chaos.anomaly(f"threads still running {JOIN_TIMEOUT:g} s after stop: {stuck}")

        expected = {r.instance.id for r in registrations}
        present = znodes_in_zookeeper(ensemble.hosts)
        budget = transport.retry.budget if transport.retry is not None else None
        return Outcome(
            load=load,
            findings=chaos.findings,
            pool=pool,
            lost=expected - present,
            unexpected=present - expected,
            denied=0 if budget is None else budget.denied,
            elapsed=elapsed,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        if http is not None:
            http.close()
        if lb is not None:
            lb.close()
        if registry is not None:
            registry.close()
        for client in clients:
            client.stop()
            client.close()
        for backend in backends:
            backend.kill()
        ensemble.close()


def longest(measured: list[tuple[str, float | None]]) -> str:
    """The longest of the measured times, with what it measured; and what never happened."""
    done = [(took, label) for label, took in measured if took is not None]
    missing = [label for label, took in measured if took is None]
    text = "-" if not done else f"{max(done)[0]:.2f} s ({max(done)[1]}; {len(measured)} measured)"
    return f"{text}; NEVER {', '.join(missing)}" if missing else text


def report(outcome: Outcome, before: tuple[int, int], after: tuple[int, int], logs: LogCollector) -> None:
    load, findings = outcome.load, outcome.findings
    faults = ", ".join(f"{name} x{count}" for name, count in findings.faults.items())
    print(f"\n{outcome.elapsed:.0f} s of faults: {faults}")
    rows = [
        ("requests sent", f"{load.sent}"),
        ("requests failed", f"{load.failed}" + (f" ({dict(load.failures)})" if load.failed else "")),
        (
            "requests retried",
            f"{load.retried} ({load.extra_attempts} extra attempts; retry budget denied {outcome.denied})",
        ),
        ("max time to eject", longest(findings.eject)),
        ("max time to converge after recovery", longest(findings.converge)),
        (
            "registrations lost",
            f"{len(outcome.lost)}"
            + (f" {sorted(outcome.lost)}" if outcome.lost else "")
            + f" (unexpected znodes: {len(outcome.unexpected)})",
        ),
        ("threads before / after", f"{before[0]} / {after[0]}"),
        ("open fds before / after", f"{before[1]} / {after[1]}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':-<{width}}  {'':-<40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"{'':-<{width}}  {'':-<40}")
    pool = outcome.pool
    print(
        f"pool seen by the balancer: smallest {pool.min_size}, most ejected at once {pool.max_ejected}, "
        f"panic {'yes' if pool.panic else 'never'}, connection states {sorted(pool.connections)}"
    )
    if load.by_phase:
        print("failed requests by the fault in progress:")
        for phase, (count, first, last) in load.by_phase.items():
            print(f"  {phase:<18} {count:6d}  from +{first:.2f}s to +{last:.2f}s")
    if load.first_failures:
        print("first failed request of each kind, per fault:")
        for line in load.first_failures:
            print(f"  {line}")
    if findings.anomalies:
        print("anomalies:")
        for line in findings.anomalies:
            print(f"  {line}")
    counts = ", ".join(f"{name} {count}" for name, count in sorted(logs.counts.items())) or "none"
    print(f"log records at WARNING and above: {counts}")
    for line in logs.lines:
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep starting faults")
    parser.add_argument("--quick", action="store_true", help="about 20 s: every fault once, short outage")
    parser.add_argument("--workers", type=int, default=6, help="client threads sending GETs")
    parser.add_argument("--pause", type=float, default=0.002, help="seconds each worker waits between GETs")
    parser.add_argument("--outage", type=float, default=None, help="seconds the whole ensemble stays down")
    parser.add_argument(
        "--kazoo-defaults",
        action="store_true",
        help="registrar and balancer on KazooClient(hosts) with kazoo's default reconnect backoff",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 20.0)
    if args.outage is None:
        args.outage = 3.0 if args.quick else 8.0
    args.backend_down = 1.0 if args.quick else 2.0
    args.warmup = 1.0 if args.quick else 2.0
    args.gap = 0.5 if args.quick else 1.0

    started = time.monotonic()
    before = (threading.active_count(), fd_count())
    logs = LogCollector(started)
    logging.basicConfig(level=logging.WARNING, handlers=[logs])
    outcome = run(args, started)
    after = settle(*before)
    report(outcome, before, after, logs)


if __name__ == "__main__":
    main()
