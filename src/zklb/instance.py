"""`ServiceInstance`: one server of a service, as a frozen value checked when it is built."""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from zklb.errors import InvalidInstance

__all__ = ["DEFAULT_PORTS", "DRAINING_STATUSES", "MAX_WEIGHT", "SCHEMES", "ServiceInstance"]

#: Schemes an instance may be reached with.
SCHEMES = frozenset({"http", "https"})
#: Port used when a URL names none.
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"http": 80, "https": 443})
#: ``instance_status`` metadata values that take an instance out of rotation (Spring Cloud Zookeeper's).
#: The Curator codec serves only ``UP`` and ``OUT_OF_SERVICE`` (draining) instances and leaves the rest
#: (``DOWN``, ``STARTING``, ...) out of the pool; an instance built by hand with ``DOWN`` drains.
DRAINING_STATUSES = frozenset({"OUT_OF_SERVICE", "DOWN"})
#: Largest weight accepted; bounds the work weighted strategies do per membership change.
MAX_WEIGHT = 1_000_000

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# Znode names: anything ZooKeeper accepts as one path element, within reason.
_ID = re.compile(r"^[^/\x00-\x1f\x7f]{1,255}$")


def check_weight(weight: object) -> int:
    """Return ``weight`` as an int in 1..MAX_WEIGHT, or raise `InvalidInstance` saying why not.

    Accepts ints, integral floats and decimal strings (the registry stores weights as strings).
    """
    value: Any = weight
    if isinstance(value, bool):
        raise InvalidInstance(f"weight must be an integer, got {weight!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise InvalidInstance(f"weight must be an integer, got {weight!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInstance(f"weight must be finite, got {weight!r}")
        if not value.is_integer():
            raise InvalidInstance(f"weight must be an integer, got {weight!r}")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidInstance(f"weight must be an integer, got {type(weight).__name__} {weight!r}")
    if not 1 <= value <= MAX_WEIGHT:
        raise InvalidInstance(f"weight must be between 1 and {MAX_WEIGHT}, got {weight!r}")
    return value


def check_host(host: object) -> str:
    """Return ``host`` (a DNS name, IPv4 or IPv6 address) normalised, or raise `InvalidInstance`."""
    if not isinstance(host, str) or not host:
        raise InvalidInstance(f"host must be a non-empty string, got {host!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return str(ipaddress.IPv6Address(bare))
        except ValueError:
            raise InvalidInstance(f"host {host!r} is not a valid IPv6 address") from None
    if re.fullmatch(r"[0-9.]+", bare):
        if _CANONICAL_IPV4.fullmatch(bare):
            return bare  # what IPv4Address would return, at a tenth of the cost (10,000 at a start)
        try:
            return str(ipaddress.IPv4Address(bare))
        except ValueError:
            raise InvalidInstance(f"host {host!r} is not a valid IPv4 address") from None
    name = bare[:-1] if bare.endswith(".") else bare
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise InvalidInstance(f"host {host!r} is not a valid host name")
    return name.lower()


def check_port(port: object) -> int:
    """Return ``port`` if it is an int in 1..65535, else raise `InvalidInstance`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInstance(f"port must be an integer between 1 and 65535, got {port!r}")
    return port


def check_id(instance_id: object) -> str:
    """Return ``instance_id`` if it can name a znode, else raise `InvalidInstance`."""
    if not isinstance(instance_id, str) or instance_id in (".", "..") or not _ID.match(instance_id):
        raise InvalidInstance(
            f"instance id must be 1-255 characters without '/' or control characters, got {instance_id!r}"
        )
    return instance_id


def _frozen_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    if metadata is None:
        return MappingProxyType({})
    if not isinstance(metadata, Mapping):
        raise InvalidInstance(f"metadata must be a mapping of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInstance(f"metadata keys and values must be strings, got {key!r}: {value!r}")
    return MappingProxyType(dict(metadata))


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """One server of a service: where to reach it and how much traffic it should get.

    Built and checked once; never changes. ``str(instance)`` is its base URL, e.g. ``http://10.0.0.2:8080``.
    Equality and hashing include every field but ``metadata`` and ``registered_at`` are left out of the hash.

    ``ssl_port`` is the port that speaks TLS, when the instance has one: for an ``https`` instance it is
    ``port`` itself (set automatically); an ``http`` instance with an ``ssl_port`` offers both (Curator's
    ``port`` and ``sslPort``), so it serves ``http://`` callers on ``port`` and ``https://`` ones there.
    """

    id: str
    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    registered_at: datetime | None = field(default=None, compare=False, hash=False)
    ssl_port: int | None = None

    def __post_init__(self) -> None:
        # Validate (and normalise) here so that no invalid instance can exist, however it was built.
        set_field = object.__setattr__
        set_field(self, "id", check_id(self.id))
        set_field(self, "host", check_host(self.host))
        set_field(self, "port", check_port(self.port))
        if self.scheme not in SCHEMES:
            raise InvalidInstance(f"scheme must be one of {sorted(SCHEMES)}, got {self.scheme!r}")
        set_field(self, "weight", check_weight(self.weight))
        set_field(self, "metadata", _frozen_metadata(self.metadata))
        if self.scheme == "https":
            if self.ssl_port is not None and self.ssl_port != self.port:
                raise InvalidInstance(
                    f"an https instance's ssl_port is its port ({self.port}), got {self.ssl_port!r}"
                )
            set_field(self, "ssl_port", self.port)
        elif self.ssl_port is not None:
            set_field(self, "ssl_port", check_port(self.ssl_port))

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        id: str | None = None,
        registered_at: datetime | None = None,
        ssl_port: int | None = None,
    ) -> ServiceInstance:
        """Build an instance from ``"scheme://host:port"`` (``"host:port"`` means http).

        The port defaults to 80/443. A path, query, fragment or user info is rejected rather than silently
        dropped. ``id`` defaults to a new UUID. ``ssl_port``: the TLS port of an http instance that
        also speaks https there.
        """
        if not isinstance(url, str) or not url.strip():
            raise InvalidInstance(f"server URL must be a non-empty string, got {url!r}")
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise InvalidInstance(f"server URL {url!r} is not valid: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise InvalidInstance(
                f"server URL {url!r} has scheme {scheme!r}; expected one of {sorted(SCHEMES)}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidInstance(f"server URL {url!r} must be scheme://host:port without a path or query")
        if parts.username is not None or parts.password is not None:
            raise InvalidInstance(f"server URL {url!r} must not carry user info")
        if not parts.hostname:
            raise InvalidInstance(f"server URL {url!r} has no host")
        return cls(
            id=str(uuid.uuid4()) if id is None else id,
            host=parts.hostname,
            port=DEFAULT_PORTS[scheme] if port is None else port,
            scheme=scheme,
            weight=weight,
            metadata=metadata or {},
            registered_at=registered_at,
            ssl_port=ssl_port,
        )

    @property
    def url(self) -> str:
        """Base URL of the instance, ``scheme://host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """True when the instance has a port that speaks TLS (``ssl_port``)."""
        return self.ssl_port is not None

    @property
    def tls_url(self) -> str | None:
        """``https://host:ssl_port``, or None for an instance without TLS."""
        if self.ssl_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.ssl_port}"

    def endpoint(self, tls: bool = False) -> tuple[str, int]:
        """``(scheme, port)`` to reach the instance; with ``tls``, its TLS port (`InvalidInstance` if none).

        Without ``tls`` it is ``(scheme, port)``: an https-only instance is reached over TLS either way.
        """
        if not tls:
            return (self.scheme, self.port)
        if self.ssl_port is None:
            raise InvalidInstance(f"instance {self.id} ({self.url}) has no TLS port")
        return ("https", self.ssl_port)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, e.g. for a socket connect."""
        return (self.host, self.port)

    @property
    def draining(self) -> bool:
        """True when the registration asks for no new requests: ``instance_status`` metadata
        ``OUT_OF_SERVICE`` or ``DOWN`` (Spring Cloud Zookeeper's values), as `Registration.drain` writes."""
        return self.metadata.get("instance_status", "UP").upper() in DRAINING_STATUSES

    @property
    def zone(self) -> str | None:
        """The ``zone`` metadata entry, if any."""
        return self.metadata.get("zone")

    def __str__(self) -> str:
        return self.url
