"""The ``zklb`` command (console script and ``python -m zklb``): look at, follow and use the registry.

One module per group of subcommands: `inspect` (``services``, ``instances``, ``pick``), `watch`,
`register` and `demo`; `_common` holds the shared options and error handling. Every subcommand takes
``--hosts`` (``$ZKLB_HOSTS``), ``--root`` (``$ZKLB_ROOT``), ``--timeout`` and ``--json``. Errors are one
line on stderr: exit 2 when ZooKeeper is not reached within ``--timeout`` (or for bad arguments),
3 for an unknown service, 1 for anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zklb.cli import demo, inspect, register, watch
from zklb.cli._common import EXIT_ERROR, CliError, add_common_options, quiet_logging
from zklb.errors import ZklbError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``zklb`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="zklb", description="Client-side load balancing over ZooKeeper.")
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect.add_parsers(sub, common)
    watch.add_parsers(sub, common)
    register.add_parsers(sub, common)
    demo.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zklb`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    args = build_parser().parse_args(argv)
    quiet_logging(args.verbose)
    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"zklb {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ZklbError as exc:
        print(f"zklb {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
