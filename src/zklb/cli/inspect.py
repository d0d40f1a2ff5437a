"""``zklb services``, ``zklb instances`` and ``zklb pick``: one-shot looks at the registry."""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from zklb.balancer import LoadBalancer
from zklb.cli._common import (
    CliError,
    Subparsers,
    check_service_exists,
    codec_of,
    connect,
    emit_json,
    instance_doc,
    positive_int,
)
from zklb.cli._table import table
from zklb.codecs import Codec, service_path
from zklb.errors import InvalidInstance, NoServerAvailable
from zklb.instance import ServiceInstance
from zklb.strategies import strategy_names

__all__ = ["add_parsers"]


@dataclass(frozen=True, slots=True)
class _Read:
    """One service's znodes as a client decodes them: what it balances over, and what it skips."""

    instances: list[ServiceInstance]
    skipped: list[dict[str, str]]


def _read_service(client: KazooClient, codec: Codec, path: str, service: str) -> _Read:
    try:
        names = sorted(client.get_children(path))
    except NoNodeError:
        return _Read([], [])
    # One pipelined round trip for all the children, as the watcher reads them.
    pending = {name: client.get_async(f"{path}/{name}") for name in names}
    read = _Read([], [])
    for name, result in pending.items():
        try:
            data, _stat = result.get()
        except NoNodeError:
            continue  # left between the listing and the read
        try:
            instance = codec.decode(service, name, data)
        except InvalidInstance as exc:
            read.skipped.append({"id": name, "reason": str(exc)})
            continue
        if instance is None:
            read.skipped.append({"id": name, "reason": "disabled ('enabled' is false)"})
        else:
            read.instances.append(instance)
    return read


def _services(args: argparse.Namespace) -> int:
    with connect(args.hosts, args.timeout) as client:
        try:
            names = sorted(client.get_children(args.root))
        except NoNodeError:
            names = []
        codec = codec_of(args)
        counts = [
            (name, len(_read_service(client, codec, service_path(codec, args.root, name), name).instances))
            for name in names
        ]
    if args.json:
        emit_json([{"service": name, "instances": count} for name, count in counts])
    elif counts:
        print(table(("SERVICE", "INSTANCES"), counts))
    else:
        print(f"no services under {args.root}")
    return 0


def _instances(args: argparse.Namespace) -> int:
    with connect(args.hosts, args.timeout) as client:
        codec = codec_of(args)
        path = check_service_exists(client, codec, args.root, args.service)
        read = _read_service(client, codec, path, args.service)
    docs = [instance_doc(i) for i in read.instances]
    if args.json:
        emit_json({"service": args.service, "instances": docs, "skipped": read.skipped})
        return 0
    print(f"{args.service}: {len(docs)} instance(s) at {path}")
    if docs:
        rows = [
            (
                d["id"],
                d["url"],
                d["weight"],
                d["status"],
                d["registered"] or "-",
                " ".join(f"{k}={v}" for k, v in sorted(d["metadata"].items())) or "-",
            )
            for d in docs
        ]
        print(table(("ID", "URL", "WEIGHT", "STATUS", "REGISTERED", "METADATA"), rows))
    for skip in read.skipped:
        print(f"skipped {skip['id']}: {skip['reason']}")
    return 0


def _pick(args: argparse.Namespace) -> int:
    with connect(args.hosts, args.timeout) as client:
        codec = codec_of(args)
        check_service_exists(client, codec, args.root, args.service)
        # No passive health and no grace: a look at the registry, not a client that sends requests.
        with LoadBalancer(
            client,
            args.service,
            root=args.root,
            codec=codec,
            strategy=args.strategy,
            health=None,
            empty_grace=0,
        ) as lb:
            try:
                counts = collections.Counter(lb.get_server(args.key).url for _ in range(args.n))
            except NoServerAvailable as exc:
                raise CliError(str(exc)) from None
    if args.json:
        emit_json({"service": args.service, "strategy": args.strategy, "picks": dict(sorted(counts.items()))})
        return 0
    rows = [(url, count, f"{100 * count / args.n:.1f}%") for url, count in sorted(counts.items())]
    print(f"{args.n} picks of {args.service} with {args.strategy}:")
    print(table(("URL", "PICKS", "SHARE"), rows))
    return 0


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``services``, ``instances`` and ``pick`` to the command's subparsers."""
    p = sub.add_parser("services", parents=[common], help="services under the root and their instance counts")
    p.set_defaults(run=_services)
    p = sub.add_parser(
        "instances", parents=[common], help="a service's instances, and znodes skipped as malformed"
    )
    p.add_argument("service")
    p.set_defaults(run=_instances)
    p = sub.add_parser("pick", parents=[common], help="pick N times and show the spread")
    p.add_argument("service")
    p.add_argument("--strategy", default="round_robin", choices=strategy_names(), help="default: round_robin")
    p.add_argument("-n", type=positive_int, default=100, help="number of picks (default: 100)")
    p.add_argument(
        "--key", default=None, help="the key of every pick (consistent_hash maps it to one server)"
    )
    p.set_defaults(run=_pick)
