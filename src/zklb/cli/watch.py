"""``zklb watch SERVICE``: a live view of one service's membership and of the ZooKeeper connection.

kazoo's threads only put what happened on a queue; the main thread draws, so a slow terminal never
holds up the watcher, and Ctrl-C (or SIGTERM) ends the loop on the main thread cleanly.
"""

from __future__ import annotations

import argparse
import datetime
import queue
import signal
import sys
from types import FrameType

from zklb.cli._common import Subparsers, check_service_exists, codec_of, connect, emit_json, instance_doc
from zklb.cli._table import table
from zklb.discovery import ServiceWatcher
from zklb.membership import Membership

__all__ = ["add_parsers"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


class _Stop(Exception):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _render(service: str, path: str, membership: Membership, connection: str) -> str:
    now = datetime.datetime.now().strftime("%H:%M:%S")
    head = (
        f"{service} at {path}  version {membership.version}  {len(membership)} instance(s)  "
        f"ZooKeeper {connection}  ({now}; Ctrl-C quits)"
    )
    if not len(membership):
        return f"{head}\n(no instances)"
    rows = [
        (
            d["id"],
            d["url"],
            d["weight"],
            d["status"],
            " ".join(f"{k}={v}" for k, v in sorted(d["metadata"].items())) or "-",
        )
        for d in map(instance_doc, membership)
    ]
    return f"{head}\n{table(('ID', 'URL', 'WEIGHT', 'STATUS', 'METADATA'), rows)}"


def _watch(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with connect(args.hosts, args.timeout) as client:
            codec = codec_of(args)
            path = check_service_exists(client, codec, args.root, args.service)
            # A queue of wake-ups; what is drawn is always read afresh from the watcher.
            changes: queue.SimpleQueue[object] = queue.SimpleQueue()

            def on_state(state: str) -> None:  # kazoo's thread: never block it
                changes.put(state)

            # empty_grace=0: show what ZooKeeper holds, not a pool a balancer would keep a while.
            with ServiceWatcher(client, args.service, root=args.root, codec=codec, empty_grace=0) as watcher:
                client.add_listener(on_state)
                try:
                    watcher.add_listener(changes.put)
                    _loop(args, path, watcher, changes)
                finally:
                    client.remove_listener(on_state)
    except (KeyboardInterrupt, _Stop):
        if sys.stdout.isatty() and not args.json:
            print()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _loop(
    args: argparse.Namespace, path: str, watcher: ServiceWatcher, changes: queue.SimpleQueue[object]
) -> None:
    shown: tuple[int, str] | None = None
    tty = sys.stdout.isatty()
    while True:
        changes.get()
        membership, connection = watcher.membership, watcher.connection
        # One output per distinct (version, connection): a wake-up whose change was already drawn
        # (several queued for one snapshot) prints nothing.
        if (membership.version, connection) == shown:
            continue
        shown = (membership.version, connection)
        if args.json:
            emit_json(
                {
                    "service": args.service,
                    "version": membership.version,
                    "connection": connection,
                    "instances": [instance_doc(i) for i in membership],
                }
            )
            continue
        text = _render(args.service, path, membership, connection)
        sys.stdout.write(f"{_CLEAR}{text}\n" if tty else f"{text}\n\n")
        sys.stdout.flush()


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``watch`` to the command's subparsers."""
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="live view of a service's membership (one JSON line per change with --json)",
    )
    p.add_argument("service")
    p.set_defaults(run=_watch)
