"""``zklb demo``: the promise, shown live: real servers fail, drain and come back; no request fails.

Three real HTTP servers on 127.0.0.1 register in ZooKeeper; a client sends real GETs through
`zklb.httpx.LoadBalancedTransport` from a thread of its own while the demo kills one server (its
requests are retried on another and it is ejected), drains another (it gets no new requests) and
brings the first back (it serves again once its ejection ends). After each phase a table shows what
each server served and what the balancer sees. Without ``--hosts`` (or ``$ZKLB_HOSTS``) the demo starts
a throwaway single-node ZooKeeper with `zklb.testing`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from zklb.balancer import LoadBalancer
from zklb.cli._common import CliError, Subparsers, add_common_options, connect, emit_json, seconds
from zklb.cli._table import table
from zklb.health import HealthPolicy
from zklb.registration import Registration
from zklb.registry import Registry
from zklb.testing import HTTPBackend, HTTPBackendHandler, ZooKeeperEnsemble, wait_until

__all__ = ["add_parsers"]

#: A short first ejection so that the server brought back serves again within the demo.
DEMO_HEALTH = HealthPolicy(consecutive_failures=3, base_ejection_time=1.0)


class _Counting(HTTPBackend):
    """A backend that counts the requests it answered."""

    def __init__(self, name: str) -> None:
        self.served = 0
        self.lock = threading.Lock()
        super().__init__(_Hello, name=name)


class _Hello(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        backend = self.backend
        assert isinstance(backend, _Counting)
        with backend.lock:
            backend.served += 1
        body = f"hello from {backend.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Load:
    """A client thread sending GETs to the service through the balancing transport, without pause."""

    def __init__(self, lb: LoadBalancer) -> None:
        import httpx  # noqa: PLC0415 - an optional extra; the other subcommands do without it

        from zklb.httpx import LoadBalancedTransport  # noqa: PLC0415

        self.sent = 0
        self.failed = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._client = httpx.Client(transport=LoadBalancedTransport(lb), timeout=5.0)
        self._url = f"http://{lb.service}/hello"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zklb-demo-load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client.get(self._url).raise_for_status()
            except Exception as exc:  # every failure counts, whatever its kind
                self.failed += 1
                self.errors[type(exc).__name__] += 1
            self.sent += 1
            self._stop.wait(0.002)  # a steady stream, not a busy loop on a shared machine

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


@contextlib.contextmanager
def _zookeeper(hosts: str | None, say: Callable[[str], None]) -> Iterator[str]:
    if hosts:
        yield hosts
        return
    say("starting a local ZooKeeper (zklb.testing, from the installed jars) ...")
    started = time.monotonic()
    with ZooKeeperEnsemble(size=1) as zk:
        say(f"ZooKeeper serving at {zk.hosts} after {time.monotonic() - started:.1f} s")
        yield zk.hosts


class _Demo:
    def __init__(self, args: argparse.Namespace, lb: LoadBalancer, backends: list[_Counting]) -> None:
        self.args = args
        self.lb = lb
        self.backends = backends
        self.phases: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        if not self.args.json:
            print(text, flush=True)

    def phase(self, title: str, load: _Load, seconds: float) -> None:
        """Let the load run ``seconds``, then show what happened in that window only."""
        stats = self.lb.stats()
        served = {b.name: b.served for b in self.backends}
        failures = {i.url: s.failures for i in self.lb.membership if (s := stats.get(i.id))}
        sent, failed = load.sent, load.failed
        time.sleep(seconds)  # the phase's length (the load runs meanwhile), not a wait for a condition
        by_url = {b.url: b for b in self.backends}
        stats = self.lb.stats()
        rows: list[dict[str, Any]] = []
        for inst in self.lb.membership:
            backend = by_url[inst.url]
            st = stats.get(inst.id)
            state = "ejected" if st and st.ejected else "draining" if inst.draining else "up"
            rows.append(
                {
                    "server": backend.name,
                    "url": inst.url,
                    "process": "running" if backend.running else "killed",
                    "balancer": state,
                    "served": backend.served - served[backend.name],
                    "failed": (st.failures if st else 0) - failures.get(inst.url, 0),
                }
            )
        sent, failed = load.sent - sent, load.failed - failed
        self.phases.append({"phase": title, "requests": sent, "failed": failed, "servers": rows})
        self.say(f"\n== {title}: {sent} requests, {failed} failed")
        headers = ("SERVER", "URL", "PROCESS", "BALANCER", "SERVED", "ATTEMPTS FAILED")
        keys = ("server", "url", "process", "balancer", "served", "failed")
        self.say(table(headers, [[r[k] for k in keys] for r in rows]))


def _register_all(registry: Registry, service: str, backends: list[_Counting]) -> list[Registration]:
    return [registry.register(service, b.url, weight=1, id=f"{b.name}-{b.port}") for b in backends]


def _demo(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    service = args.service or f"demo-{uuid.uuid4().hex[:6]}"
    backends = [_Counting(name) for name in ("alpha", "bravo", "charlie")]
    seconds = args.phase_seconds
    with contextlib.ExitStack() as stack:
        hosts = stack.enter_context(_zookeeper(args.hosts, say))
        client = stack.enter_context(connect(hosts, args.timeout))
        for backend in backends:
            stack.enter_context(backend)
        registry = stack.enter_context(Registry(client, root=args.root))
        regs = _register_all(registry, service, backends)
        lb = stack.enter_context(
            LoadBalancer(client, service, root=args.root, health=DEMO_HEALTH, strategy="round_robin")
        )
        if not lb.wait_for(lambda m: len(m) == len(backends), args.timeout):
            raise CliError("the balancer did not see the three servers in time")
        say(f"three HTTP servers registered as {args.root}/{service}; a client sends GETs through zklb")
        demo = _Demo(args, lb, backends)
        alpha, bravo, charlie = backends
        with _Load(lb) as load:
            demo.phase("1. steady: round robin over three servers", load, seconds)

            bravo.kill()
            say(f"\nkilled {bravo.name} ({bravo.url}): connects refused, its znode still registered")
            _wait(lambda: lb.stats()[regs[1].instance.id].ejected, args.timeout, "bravo ejected")
            demo.phase(
                f"2. {bravo.name} killed: its requests retried elsewhere, it is ejected", load, seconds
            )

            regs[2].drain()
            say(f"\ndraining {charlie.name}: marked OUT_OF_SERVICE in ZooKeeper")
            _wait(lambda: lb.membership.by_id[regs[2].instance.id].draining, args.timeout, "charlie draining")
            demo.phase(f"3. {charlie.name} draining: no new requests for it", load, seconds)

            bravo.start()
            say(f"\n{bravo.name} started again at {bravo.url}")
            _wait(lambda: not lb.stats()[regs[1].instance.id].ejected, args.timeout, "bravo back")
            demo.phase(f"4. {bravo.name} back: its ejection ended, it serves again", load, seconds)
        total, failed = load.sent, load.failed
        if args.json:
            emit_json({"service": service, "requests": total, "failed": failed, "phases": demo.phases})
        else:
            say(f"\n{total} requests sent, {failed} failed; {alpha.name} served throughout")
            if failed:
                say(f"failures by kind: {dict(load.errors)}")
    say("servers stopped, registrations removed; demo done.")
    return 0 if failed == 0 else 1


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    try:
        wait_until(condition, timeout=timeout, what=what)
    except TimeoutError:
        raise CliError(f"demo: {what}: not seen within {timeout:g} s") from None


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``demo`` to the command's subparsers (its ``--hosts`` defaults to a ZooKeeper of its own)."""
    own = argparse.ArgumentParser(add_help=False)
    add_common_options(own, hosts_default=None, codec=False)  # the demo writes Curator's format
    p = sub.add_parser(
        "demo",
        parents=[own],
        help="three servers fail, drain and come back under load; no request fails",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--service", default=None, help="service name (default: demo-<random>)")
    p.add_argument("--phase-seconds", type=seconds, default=2.0, help="length of each phase (default: 2)")
    p.set_defaults(run=_demo)
