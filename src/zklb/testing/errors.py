"""The errors of `zklb.testing`: ZooKeeper is not installed, or a member did not start."""

from __future__ import annotations

__all__ = ["ZooKeeperNotInstalled", "ZooKeeperStartError"]


class ZooKeeperNotInstalled(RuntimeError):
    """Java or the ZooKeeper jars are missing; the message says what to install."""


class ZooKeeperStartError(RuntimeError):
    """A ZooKeeper member did not start or did not serve in time.

    The message contains the tail of the member's log file.
    """
