"""``zklb register SERVICE URL``: hold one registration for a shell script or a sidecar.

Registers, prints where, then holds until SIGINT or SIGTERM; on either it drains for ``--drain``
seconds (clients stop sending new requests, the ones in flight finish) and deregisters.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from zklb.cli._common import (
    CliError,
    Subparsers,
    codec_of,
    connect,
    emit_json,
    instance_doc,
    non_negative_seconds,
)
from zklb.errors import InvalidInstance, RegistryError
from zklb.registry import Registry

__all__ = ["add_parsers"]


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _register(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before connecting, so a signal during start-up still leads to a clean deregistration.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with (
            connect(args.hosts, args.timeout) as client,
            Registry(client, root=args.root, codec=codec_of(args)) as registry,
        ):
            try:
                reg = registry.register(
                    args.service, args.url, weight=args.weight, metadata=dict(args.meta), timeout=args.timeout
                )
            except (InvalidInstance, RegistryError) as exc:
                raise CliError(f"cannot register {args.url}: {exc}") from None
            if args.json:
                emit_json({"service": args.service, "path": reg.path, "instance": instance_doc(reg.instance)})
            else:
                print(
                    f"registered {reg.instance.url} as {reg.path}; Ctrl-C or SIGTERM to deregister",
                    flush=True,
                )
            # A timed wait, so that the main thread runs the signal handler promptly.
            while not stop.wait(0.5):
                pass
            if args.drain > 0 and not args.json:
                print(f"draining for {args.drain:g} s ...", flush=True)
            reg.close(drain=args.drain)
            if not args.json:
                print(f"deregistered {reg.path}", flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``register`` to the command's subparsers."""
    p = sub.add_parser(
        "register", parents=[common], help="register a server until SIGINT/SIGTERM, then drain and deregister"
    )
    p.add_argument("service")
    p.add_argument("url", help="e.g. http://10.0.0.2:8080")
    p.add_argument("--weight", type=int, default=1, help="relative share of requests (default: 1)")
    p.add_argument("--meta", type=_meta, action="append", default=[], metavar="KEY=VALUE", help="metadata")
    p.add_argument(
        "--drain", type=non_negative_seconds, default=0.0, help="seconds out of rotation before deregistering"
    )
    p.set_defaults(run=_register)
