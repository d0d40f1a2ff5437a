"""What every subcommand shares: the connection options, one-line errors, JSON output, kazoo's silence."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from zklb._config import FALLBACK_HOSTS, FALLBACK_ROOT, HOSTS_VARIABLE, ROOT_VARIABLE
from zklb.codecs import CODEC_NAMES, Codec, resolve_codec, service_path
from zklb.instance import ServiceInstance

__all__ = [
    "EXIT_ERROR",
    "EXIT_UNKNOWN_SERVICE",
    "EXIT_UNREACHABLE",
    "CliError",
    "Subparsers",
    "add_common_options",
    "check_service_exists",
    "codec_of",
    "connect",
    "emit_json",
    "instance_doc",
    "non_negative_seconds",
    "positive_int",
    "quiet_logging",
    "seconds",
]

EXIT_ERROR = 1
EXIT_UNREACHABLE = 2  # the same code as argparse's bad arguments: nothing was done
EXIT_UNKNOWN_SERVICE = 3

#: What each module's ``add_parsers`` adds its subcommands to.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_HOSTS = FALLBACK_HOSTS
SESSION_TIMEOUT = 10.0  # seconds, as LoadBalancer and Registry default to
DEFAULT_ROOT = FALLBACK_ROOT


class CliError(Exception):
    """A failure the command reports as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def add_common_options(
    parser: argparse.ArgumentParser, *, hosts_default: str | None = DEFAULT_HOSTS, codec: bool = True
) -> None:
    """``--hosts``, ``--root``, ``--timeout``, ``--codec`` (unless ``codec`` is False), ``--json`` and
    ``-v``, with their environment defaults."""
    # The library's variables (zklb._config), read here so that --help shows the value in effect.
    hosts = os.environ.get(HOSTS_VARIABLE, "").strip() or hosts_default
    where = f"default: $ZKLB_HOSTS or {hosts_default}" if hosts_default else "default: $ZKLB_HOSTS"
    parser.add_argument(
        "--hosts", default=hosts, help=f"ZooKeeper connection string, chroot allowed ({where})"
    )
    parser.add_argument(
        "--root",
        default=os.environ.get(ROOT_VARIABLE, "").strip() or DEFAULT_ROOT,
        help=f"registry root (default: $ZKLB_ROOT or {DEFAULT_ROOT})",
    )
    parser.add_argument(
        "--timeout", type=seconds, default=10.0, help="seconds to reach ZooKeeper (default: 10)"
    )
    if codec:
        parser.add_argument(
            "--codec",
            choices=CODEC_NAMES,
            default="curator",
            help="znode format: Curator/Spring, Finagle ServerSet or Dubbo 2 providers (default: curator)",
        )
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log zklb's own messages (INFO) on stderr"
    )


def _number(text: str, kind: type[float] | type[int], minimum: float, strict: bool) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
    if value < minimum or (strict and value == minimum):
        raise argparse.ArgumentTypeError(
            f"must be {'more than' if strict else 'at least'} {minimum:g}, got {text}"
        )
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds more than 0."""
    return _number(text, float, 0, strict=True)


def non_negative_seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    return _number(text, float, 0, strict=False)


def positive_int(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    return int(_number(text, int, 1, strict=False))


def quiet_logging(verbose: bool) -> None:
    """Keep kazoo's reconnect chatter off stderr; show zklb's own records only when asked.

    Configures the two loggers of this process only (the library itself never configures logging).
    """
    kazoo = logging.getLogger("kazoo")
    kazoo.addHandler(logging.NullHandler())
    kazoo.propagate = False
    zklb = logging.getLogger("zklb")
    zklb.propagate = False
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        zklb.addHandler(handler)
        zklb.setLevel(logging.INFO)
    else:
        zklb.addHandler(logging.NullHandler())


@contextmanager
def connect(hosts: str, timeout: float) -> Iterator[KazooClient]:
    """A started kazoo client, stopped on exit; `CliError` (exit 2) if ZooKeeper is not reached in time."""
    try:
        # --timeout bounds the connect only; the session timeout stays zklb's default.
        client = KazooClient(hosts=hosts, timeout=SESSION_TIMEOUT)
    except ValueError as exc:  # kazoo's parse of a malformed connection string
        raise CliError(f"bad --hosts {hosts!r}: {exc}", EXIT_UNREACHABLE) from None
    try:
        # Not kazoo's start(timeout): on a timeout it stops the client inline, and against a ZooKeeper
        # that accepts connections and never answers (hung, frozen, black-holed) that stop waits out the
        # whole session timeout, long after --timeout.
        reached = client.start_async().wait(timeout) and client.connected
    except Exception:  # a host name that does not resolve: not reached either
        reached = False
    if not reached:
        # kazoo's threads are daemons: the process may exit while this stop is still waiting.
        threading.Thread(target=_stop, args=(client,), name="zklb-cli-stop", daemon=True).start()
        raise CliError(f"ZooKeeper at {hosts} not reachable within {timeout:g} s", EXIT_UNREACHABLE)
    try:
        yield client
    finally:
        _stop(client)


def _stop(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # already stopping; nothing left to release
        pass


def codec_of(args: argparse.Namespace) -> Codec:
    """The codec ``--codec`` names."""
    return resolve_codec(args.codec)


def check_service_exists(client: KazooClient, codec: Codec, root: str, service: str) -> str:
    """The service's path as ``codec`` lays it out; `CliError` (exit 3) if it is not in ZooKeeper."""
    path = service_path(codec, root.rstrip("/") or "/", service)
    try:
        exists = client.exists(path) is not None
    except NoNodeError:
        exists = False
    if not exists:
        raise CliError(f"unknown service {service!r}: no {path} in ZooKeeper", EXIT_UNKNOWN_SERVICE)
    return path


def instance_doc(instance: ServiceInstance) -> dict[str, Any]:
    """One instance as the JSON outputs show it."""
    registered = instance.registered_at
    return {
        "id": instance.id,
        "url": instance.url,
        "weight": instance.weight,
        "metadata": dict(instance.metadata),
        "registered": registered.isoformat() if registered is not None else None,
        "status": "draining" if instance.draining else "up",
    }


def emit_json(doc: object) -> None:
    """One JSON document (or line) on stdout, flushed at once: it is often read through a pipe."""
    sys.stdout.write(json.dumps(doc, sort_keys=False) + "\n")
    sys.stdout.flush()
