"""Small helpers for tests against ZooKeeper: wait for a condition, expire a session."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kazoo.client import KazooClient

__all__ = ["expire_session", "wait_until"]


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str = "condition", *, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; raise `TimeoutError` naming ``what`` after ``timeout`` s.

    For tests that wait on a condition: a deadline instead of a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def expire_session(
    client: KazooClient, hosts: str, timeout: float = 30.0, *, kazoo_options: Mapping[str, Any] | None = None
) -> None:
    """Make ZooKeeper expire ``client``'s session, as a real expiry would.

    A second connection joins the same session (id and password) and closes it, so the server ends the
    session and deletes its ephemeral znodes; ``client`` then sees LOST and, if it keeps running,
    reconnects with a new session. ``kazoo_options`` are for that second connection (a TLS server's
    `ZooKeeperEnsemble.kazoo_options`).
    """
    session_id, password = client.client_id
    other = KazooClient(hosts=hosts, client_id=(session_id, password), **(kazoo_options or {}))
    other.start(timeout=timeout)
    other.stop()
    other.close()
