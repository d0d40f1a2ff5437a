"""What operators read about a ZooKeeper connection: one WARNING when it goes, one INFO when it is back.

Rules of this module:

- One `Outage` per kazoo client (held by its `zklb._worker.ClientWorker`), fed every state change on
  kazoo's thread: it only compares, records and logs, never blocks.
- The first SUSPENDED or LOST of an outage logs one WARNING naming the services whose watchers now
  serve their last-known membership; the next CONNECTED logs one INFO with the outage's length and
  whether the session survived. A LOST within an outage (the session expired) is one INFO more.
- A client being stopped by its owner is no outage: its final LOST is not logged.
- `QuietKazooLog` is the logger zklb gives the kazoo clients it owns (``KazooClient(logger=...)``):
  kazoo's own lines go to ``zklb.kazoo``, its INFO chatter at DEBUG, and of its warnings only the first
  of each outage (kazoo logs one or two per reconnect attempt, about fifteen for a 5 s outage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kazoo.client import KazooClient, KazooState

__all__ = ["KAZOO_LOGGER", "Outage", "QuietKazooLog", "describe_hosts"]

log = logging.getLogger("zklb.connection")

#: The logger kazoo's own lines go to, for the clients zklb owns.
KAZOO_LOGGER = "zklb.kazoo"

#: Services named in one line at most; the rest are counted.
MAX_NAMED = 10


def describe_hosts(client: KazooClient | None) -> str:
    """``host:port,host:port`` of a kazoo client, for log lines."""
    hosts = getattr(client, "hosts", None) or ()
    try:
        return ",".join(f"{host}:{port}" for host, port in hosts) or "ZooKeeper"
    except (TypeError, ValueError):
        return "ZooKeeper"


def name_some(names: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``a, b, c`` for a few names, ``a, b, ... and 12 more`` past ``limit``: log lines stay short."""
    unique = sorted(set(names))
    if len(unique) <= limit:
        return ", ".join(unique)
    return f"{', '.join(unique[:limit])}, ... and {len(unique) - limit} more"


class Outage:
    """The connection state of one client as operators see it (see the module's rules)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None  # when the outage began; None while connected
        self._expired = False

    def on_state(self, state: str, client: KazooClient | None, services: Sequence[str]) -> None:
        """Record a kazoo state change; log the start and the end of an outage."""
        if state == KazooState.CONNECTED:
            if self._since is not None:
                length = self._clock() - self._since
                session = "a new session" if self._expired else "the same session"
                log.info(
                    "ZooKeeper connection to %s restored after %.1f s (%s)",
                    describe_hosts(client),
                    length,
                    session,
                )
            self._since, self._expired = None, False
            return
        stopped = client is not None and _stopping(client)
        if stopped:
            return  # its owner is closing it: the end of a client, not an outage
        if self._since is None:
            self._since = self._clock()
            self._expired = state == KazooState.LOST
            what = "session lost" if self._expired else "connection suspended"
            stale = (
                f"; serving the last-known membership of {name_some(services)} until it is back"
                if services
                else ""
            )
            log.warning("ZooKeeper %s (%s)%s", what, describe_hosts(client), stale)
        elif state == KazooState.LOST and not self._expired:
            self._expired = True
            log.info("ZooKeeper session on %s expired during the outage", describe_hosts(client))


def _stopping(client: KazooClient) -> bool:
    stopped = getattr(client, "_stopped", None)
    return bool(stopped is not None and stopped.is_set())


class QuietKazooLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's logger for a client zklb owns: one warning per outage, the rest at DEBUG (see the rules).

    An outage starts with the first warning kazoo logs and ends when the client is connected again
    (`on_state`, a listener on that client). Errors always pass: they are bugs, not weather.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger(KAZOO_LOGGER), {})
        self._quiet = False  # a warning of this outage was let through

    def on_state(self, state: str) -> None:
        """kazoo state listener: a reconnect ends the outage."""
        if state == KazooState.CONNECTED:
            self._quiet = False

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level < logging.ERROR:
            if level < logging.WARNING or self._quiet:
                level = min(level, logging.DEBUG)
            else:
                self._quiet = True
        super().log(level, msg, *args, **kwargs)

    def warn(self, msg: object, *args: object, **kwargs: Any) -> None:
        # kazoo still calls the deprecated spelling on one path; LoggerAdapter.warn would warn about it.
        self.log(logging.WARNING, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs
