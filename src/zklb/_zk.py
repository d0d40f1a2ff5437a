"""The ZooKeeper edge's small shared helpers: bounded retries, transient errors, argument checks, paths,
and reading a kazoo client's state. The client itself (owned or borrowed, and its connect) is
`zklb._client`'s.

Private: the registry and the watcher use it; nothing above them imports kazoo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import WatchedEvent
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from zklb._config import default_root
from zklb.errors import ConfigurationError
from zklb.health import Connection

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "TRANSIENT_ERRORS",
    "bounded_retry",
    "check_timeout",
    "connection_state",
    "drop_watches",
    "is_stopped",
    "join_path",
    "session_id",
]

T = TypeVar("T")

#: Errors that mean "ZooKeeper is away right now", worth a bounded retry and a re-sync on reconnect.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    OperationTimeoutError,
    SessionExpiredError,
    KazooTimeoutError,
    TimeoutError,
)

#: How long one ZooKeeper request may take before it counts as failed, unless a constructor says otherwise.
DEFAULT_REQUEST_TIMEOUT = 10.0


def bounded_retry(func: Callable[[], T], *, attempts: int = 3, deadline: float = 10.0) -> T:
    """Call ``func``, retrying transient ZooKeeper errors a bounded number of times.

    kazoo's own command retry is unbounded by default and would pin a thread through an outage; this one
    gives up after ``attempts`` tries or ``deadline`` seconds and re-raises the last error.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(TRANSIENT_ERRORS),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        reraise=True,
    )
    return retrying(func)


def join_path(*parts: str) -> str:
    """Join znode path parts with single slashes: ``join_path("/services/", "api")`` -> ``/services/api``."""
    joined = "/".join(part.strip("/") for part in parts if part.strip("/"))
    return "/" + joined


def check_timeout(name: str, value: float, *, zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number of seconds (> 0, or >= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value!r}")
    return float(value)


def session_id(client: KazooClient) -> int | None:
    """The client's ZooKeeper session id, or None while it has none (never connected, or closed).

    kazoo's ``client_id`` is None in those states; reading ``client_id[0]`` there raised TypeError.
    """
    ident = client.client_id
    return None if ident is None else int(ident[0])


def is_stopped(client: KazooClient) -> bool:
    """True when the client is not running: never started, or stopped by its owner (its session over)."""
    stopped = getattr(client, "_stopped", None)
    return bool(stopped is not None and stopped.is_set())


def connection_state(client: KazooClient | None) -> Connection:
    """kazoo's connection state in zklb's words: ``"connected"``, ``"suspended"`` or ``"lost"``."""
    if client is None:
        return "lost"
    state = client.state
    if state == KazooState.CONNECTED:
        return "connected"
    if state == KazooState.SUSPENDED:
        return "suspended"
    return "lost"


def drop_watches(
    client: KazooClient, under: str, callbacks: tuple[Callable[[WatchedEvent], object], ...]
) -> None:
    """Remove ``callbacks`` from every watch kazoo holds on ``under`` and the znodes below it.

    kazoo has no public call to drop a watch; its tables map a path to a set of callbacks, and a
    component that closes must not leave its callbacks (and itself, through them) on a shared client.
    A ``set.discard`` is atomic under the GIL, and the tables are copied before they are walked, so this
    is safe beside kazoo's own thread; ZooKeeper's server-side watch fires once more and finds nothing.
    """
    prefix = under.rstrip("/") + "/"
    for table_name in ("_child_watchers", "_data_watchers"):
        table = getattr(client, table_name, None)
        if not isinstance(table, dict):
            continue
        for path, watchers in tuple(table.items()):
            if path == under or path.startswith(prefix):
                for callback in callbacks:
                    watchers.discard(callback)


def check_root(root: str | None) -> str:
    """Return ``root`` normalised (absolute, no trailing slash), or raise ValueError; None: ``ZKLB_ROOT``."""
    if root is None:
        root = default_root()
    if not isinstance(root, str) or not root.startswith("/"):
        raise ValueError(f"root must be an absolute znode path like '/services', got {root!r}")
    return join_path(root)


def check_service(service: str) -> str:
    """Return ``service`` if it can name one znode, else raise ValueError."""
    if not isinstance(service, str) or not service or "/" in service or service in (".", ".."):
        raise ValueError(f"service name must be a non-empty znode name without '/', got {service!r}")
    return service
