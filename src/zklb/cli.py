"""The ``zklb`` command: ``demo``, ``list``, ``watch`` and ``register``."""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Sequence

from zklb.balancer import LoadBalancer
from zklb.discovery import ServiceWatcher
from zklb.errors import ZklbError
from zklb.membership import Membership
from zklb.registry import Registry

__all__ = ["main"]

DEMO_SERVERS = (("http://127.0.0.1:8001", 1), ("http://127.0.0.1:8002", 2), ("http://127.0.0.1:8003", 3))
DEMO_STRATEGIES = ("round_robin", "weighted_round_robin", "least_connections")


def _spread(lb: LoadBalancer, picks: int) -> str:
    counts = collections.Counter(lb.get_server().url for _ in range(picks))
    return "  ".join(f"{url}: {counts[url]:2d}" for url in sorted(counts))


def _sequence(lb: LoadBalancer, picks: int) -> str:
    short = {s.url: s.url.rsplit(":", 1)[-1] for s in lb.servers()}
    return " ".join(short[lb.get_server().url] for _ in range(picks))


def demo(picks: int = 60) -> int:
    """Start a local ZooKeeper, register three weighted servers and show each strategy balance them."""
    from zklb.testing import ZooKeeperEnsemble  # noqa: PLC0415 - only the demo starts ZooKeeper

    print("starting a local ZooKeeper (standalone, from the Debian package's jars) ...", flush=True)
    started = time.monotonic()
    with ZooKeeperEnsemble(size=1) as zk:
        print(f"ZooKeeper serving at {zk.hosts} after {time.monotonic() - started:.1f} s\n")
        with LoadBalancer(zk.hosts, service="demo-api") as lb:
            for url, weight in DEMO_SERVERS:
                reg = lb.add_server(url, weight=weight)
                print(f"registered {url} weight={weight} as {reg.path}")
            print(f"\npool: {len(lb.servers())} servers, membership version {lb.membership.version}\n")
            for name in DEMO_STRATEGIES:
                lb.set_strategy(name)
                print(f"{name:<21} {picks} picks -> {_spread(lb, picks)}")
                print(f"{'':<21} first 12: {_sequence(lb, 12)}")
            lb.set_strategy("least_connections")
            held = [lb.acquire() for _ in range(4)]
            busy = collections.Counter(lease.server.url for lease in held)
            print(f"\nleast_connections with 4 requests in flight {dict(sorted(busy.items()))}:")
            print(f"{'':<21} next pick -> {lb.get_server().url} (fewest in flight per unit of weight)")
            for lease in held:
                lease.release()

            victim = lb.servers()[-1]
            print(f"\nremoving {victim.url} (deleting its znode) ...")
            t0 = time.perf_counter()
            lb.remove_server(victim)  # returns once the watcher has seen the change
            elapsed = (time.perf_counter() - t0) * 1000
            version = lb.membership.version
            print(f"pool shrank to {len(lb.servers())} servers in {elapsed:.1f} ms (version {version})")
            lb.set_strategy("weighted_round_robin")
            print(f"{'weighted_round_robin':<21} {picks} picks -> {_spread(lb, picks)}")
    print("\nZooKeeper stopped; demo done.")
    return 0


def _print_membership(m: Membership) -> None:
    print(f"version {m.version}: {len(m)} instance(s)")
    for inst in m.instances:
        print(f"  {inst.id}  {inst.url}  weight={inst.weight}  {dict(inst.metadata)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zklb`` command."""
    parser = argparse.ArgumentParser(prog="zklb", description="ZooKeeper client-side load balancing")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="live demo against a local ZooKeeper it starts itself")
    p_demo.add_argument("--picks", type=int, default=60)
    for name, text in (("list", "print a service's instances"), ("watch", "print membership changes")):
        p = sub.add_parser(name, help=text)
        p.add_argument("service")
        p.add_argument("--hosts", default="127.0.0.1:2181")
        p.add_argument("--root", default="/services")
    p_reg = sub.add_parser("register", help="register a server until interrupted")
    p_reg.add_argument("service")
    p_reg.add_argument("url")
    p_reg.add_argument("--weight", type=int, default=1)
    p_reg.add_argument("--hosts", default="127.0.0.1:2181")
    p_reg.add_argument("--root", default="/services")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.picks)
        if args.command == "register":
            with Registry(args.hosts, root=args.root) as registry:
                reg = registry.register(args.service, args.url, weight=args.weight)
                print(f"registered {reg.instance.url} at {reg.path}; Ctrl-C to deregister", flush=True)
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                with contextlib.suppress(KeyboardInterrupt):
                    stop.wait()
            return 0
        with ServiceWatcher(args.hosts, args.service, root=args.root) as watcher:
            _print_membership(watcher.membership)
            if args.command == "list":
                return 0
            watcher.add_listener(_print_membership)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        return 0
    except ZklbError as exc:
        print(f"zklb: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
