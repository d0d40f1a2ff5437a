"""Znode formats: each codec turns a znode's name and bytes into a `ServiceInstance` and back.

`curator` (Apache Curator x-discovery JSON) is the default and the only format so far.
"""

from __future__ import annotations

from typing import Protocol

from zklb.instance import ServiceInstance

__all__ = ["Codec"]


class Codec(Protocol):
    """How instances are stored in znodes."""

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """The znode data for ``instance`` of ``service``."""
        ...

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The instance stored in znode ``name``; None if it is deliberately disabled.

        Raises `zklb.errors.InvalidInstance` saying what is wrong when the data is malformed.
        """
        ...
