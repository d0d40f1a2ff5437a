"""Apache Curator x-discovery's JSON: the registry format zklb writes and reads by default.

Curator, Spring Cloud Zookeeper and Dubbo 3 write this format, so zklb serves their instances, and Java
readers using Curator's ``ServiceDiscovery`` with payload type ``Object`` or ``Map`` see zklb's.
Spring Cloud Zookeeper's reader insists on its own payload class: ``CuratorCodec(payload_class="spring")``
writes it (and then a plain ``Map`` reader cannot read the instance; see docs/registry-format.md).

Each instance is an ephemeral znode ``/<root>/<service>/<id>`` holding::

    {"name": "api", "id": "<id>", "address": "10.0.0.2", "port": 8080, "sslPort": null,
     "payload": {"metadata": {"weight": "3", "zone": "a"}}, "registrationTimeUTC": 1700000000000,
     "serviceType": "DYNAMIC", "uriSpec": {"parts": [...]}}

Weight and other metadata live in ``payload.metadata`` as strings (Spring Cloud LoadBalancer's
convention). Where the instance is reached is what Curator's own ``buildUriSpec()`` gives, when the
``uriSpec`` resolves to an ``http(s)://host:port`` URL; else the ``port``/``sslPort`` fields decide.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from zklb.codecs._json import MAX_ZNODE_BYTES, load_object
from zklb.errors import ConfigurationError, InstanceSkipped, InvalidInstance
from zklb.instance import SCHEMES, ServiceInstance, check_weight

__all__ = ["MAX_ZNODE_BYTES", "SPRING_PAYLOAD_CLASS", "CuratorCodec", "resolve_uri_spec"]

#: The payload class Spring Cloud Zookeeper writes and its readers require.
SPRING_PAYLOAD_CLASS = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"

_WEIGHT_KEY = "weight"
_SCHEME_KEY = "scheme"
_STATUS_KEY = "instance_status"  # Spring Cloud Zookeeper's
# Served: UP, and OUT_OF_SERVICE as draining (`Registration.drain`). DOWN, STARTING, UNKNOWN: not served.
_SERVED_STATUSES = frozenset({"UP", "OUT_OF_SERVICE"})


def _uri_spec(port_variable: str) -> dict[str, list[dict[str, object]]]:
    """Curator's serialised URI spec ``{scheme}://{address}:{<port_variable>}``."""
    return {
        "parts": [
            {"value": "scheme", "variable": True},
            {"value": "://", "variable": False},
            {"value": "address", "variable": True},
            {"value": ":", "variable": False},
            {"value": port_variable, "variable": True},
        ]
    }


# Curator's {scheme} is https whenever sslPort is set, and {port} is always the plain port: so an
# instance with a TLS port (https-only, or both) names {ssl-port}, and Curator builds https://addr:sslPort.
_HTTP_URI_SPEC = _uri_spec("port")
_TLS_URI_SPEC = _uri_spec("ssl-port")


def resolve_uri_spec(doc: Mapping[str, Any]) -> str | None:
    """The URI Curator's ``ServiceInstance.buildUriSpec()`` builds for ``doc``; None without a ``uriSpec``.

    As Curator 5.4 does: ``{scheme}`` is ``https`` when ``sslPort`` is set, else ``http``; ``{name}``,
    ``{id}``, ``{address}``, ``{port}``, ``{ssl-port}``, ``{registration-time-utc}`` and
    ``{service-type}`` (lower case) are the fields; an unknown or null variable is empty.
    """
    spec = doc.get("uriSpec")
    if not isinstance(spec, dict):
        return None
    parts = spec.get("parts")
    if not isinstance(parts, list):
        return None
    service_type = doc.get("serviceType")
    variables: dict[str, object] = {
        "scheme": "https" if doc.get("sslPort") is not None else "http",
        "name": doc.get("name"),
        "id": doc.get("id"),
        "address": doc.get("address"),
        "port": doc.get("port"),
        "ssl-port": doc.get("sslPort"),
        "registration-time-utc": doc.get("registrationTimeUTC"),
        "service-type": service_type.lower() if isinstance(service_type, str) else None,
    }
    out = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("value"), str):
            raise InvalidInstance(f"'uriSpec' part must be {{'value': str, 'variable': bool}}, got {part!r}")
        value = part["value"]
        if part.get("variable") is True:
            resolved = variables.get(value)
            out.append("" if resolved is None else str(resolved))
        else:
            out.append(value)
    return "".join(out)


# A host that urlsplit() returns as is (but lower-cased), with nothing it could read as user, port or path.
_PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+")


def _endpoint(doc: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """`_uri_endpoint` of `resolve_uri_spec`, without building and parsing the URI for the spec zklb
    and Curator write (``{scheme}://{address}:{port}``): decoding 10,000 instances happens at start."""
    spec = doc.get("uriSpec")
    plain = spec == _HTTP_URI_SPEC
    if plain or spec == _TLS_URI_SPEC:
        address = doc.get("address")
        port = doc.get("port" if plain else "sslPort")
        if (
            isinstance(address, str)
            and _PLAIN_HOST.fullmatch(address)
            and type(port) is int
            and 0 <= port <= 65535
        ):
            return ("https" if doc.get("sslPort") is not None else "http"), address.lower(), port
    return _uri_endpoint(resolve_uri_spec(doc))


def _uri_endpoint(uri: str | None) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a resolved URI that names an http(s) endpoint with a port, else None."""
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or port is None or not parts.hostname:
        return None  # e.g. "https://10.0.0.1:" (a null port), or a non-HTTP spec: the fields decide
    return scheme, parts.hostname, port


def _metadata_from(payload: object) -> dict[str, str]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise InvalidInstance(f"'payload' must be an object or null, got {type(payload).__name__}")
    raw = payload.get("metadata")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInstance(f"'payload.metadata' must be an object, got {type(raw).__name__}")
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        # Java writers store Map<String, String>; tolerate plain scalars from hand-written nodes.
        if isinstance(value, str):
            metadata[key] = value
        elif isinstance(value, bool):
            metadata[key] = "true" if value else "false"
        elif isinstance(value, int | float) and math.isfinite(value):
            metadata[key] = str(value)
        else:
            raise InvalidInstance(f"'payload.metadata.{key}' must be a string, got {value!r}")
    return metadata


def _optional_port(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInstance(f"{key!r} must be an integer between 1 and 65535 or null, got {value!r}")
    return value


def _registered_at(doc: Mapping[str, Any]) -> datetime | None:
    millis = doc.get("registrationTimeUTC")
    if millis is None:
        return None
    if isinstance(millis, bool) or not isinstance(millis, int):
        raise InvalidInstance(f"'registrationTimeUTC' must be epoch milliseconds, got {millis!r}")
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidInstance(f"'registrationTimeUTC' {millis!r} is out of range") from None


class CuratorCodec:
    """Encodes and decodes Curator x-discovery JSON (see the module docstring).

    ``payload_class``: None (default) writes a plain map payload ``{"metadata": {...}}``, which Curator
    readers with payload type ``Map`` or ``Object`` read; ``"spring"`` writes Spring Cloud Zookeeper's
    ``{"@class": SPRING_PAYLOAD_CLASS, "id", "name", "metadata"}``, which its readers require; any other
    string is a Java class name written as ``@class`` next to the metadata. Reading accepts all of them.
    """

    __slots__ = ("_class", "_spring")

    def __init__(self, payload_class: str | None = None) -> None:
        if payload_class is not None and (not isinstance(payload_class, str) or not payload_class.strip()):
            raise ConfigurationError(
                f"payload_class must be None, 'spring' or a Java class name, got {payload_class!r}"
            )
        self._spring = payload_class == "spring"
        self._class = SPRING_PAYLOAD_CLASS if self._spring else payload_class

    @property
    def payload_class(self) -> str | None:
        """The ``@class`` written in payloads (None: none)."""
        return self._class

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """The znode data for ``instance``: its plain port in ``port``, its TLS port in ``sslPort``."""
        metadata = dict(instance.metadata)
        metadata[_WEIGHT_KEY] = str(instance.weight)
        payload: dict[str, object] = {"metadata": metadata}
        if self._class is not None:
            payload = {"@class": self._class, **payload}
            if self._spring:
                metadata.setdefault(_STATUS_KEY, "UP")  # what Spring writes for a registered instance
                payload = {"@class": self._class, "id": instance.id, "name": service, "metadata": metadata}
        registered = instance.registered_at or datetime.now(UTC)
        plain = None if instance.scheme == "https" else instance.port
        doc = {
            "name": service,
            "id": instance.id,
            "address": instance.host,
            "port": plain,
            "sslPort": instance.ssl_port,
            "payload": payload,
            "registrationTimeUTC": int(registered.timestamp() * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": _HTTP_URI_SPEC if instance.ssl_port is None else _TLS_URI_SPEC,
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The instance in znode ``name``; `InvalidInstance` if malformed, `InstanceSkipped` if not served.

        Not served: ``enabled`` false, or a Spring ``instance_status`` other than ``UP`` and
        ``OUT_OF_SERVICE``. ``OUT_OF_SERVICE`` is served as *draining* (in the pool, no new requests
        while an ``UP`` instance is there), as `Registration.drain` writes it. Where the instance is
        reached: the URI Curator's ``buildUriSpec()`` builds, if it is ``http(s)://host:port``; else
        ``port`` (plain) and ``sslPort`` (TLS), both kept when both are given. Unknown fields are
        ignored; a missing ``enabled`` means enabled; the znode name is the id.
        """
        doc = load_object(data)
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidInstance(f"'enabled' must be true or false, got {enabled!r}")
        if not enabled:
            raise InstanceSkipped("disabled ('enabled': false)")
        address = doc.get("address")
        if not isinstance(address, str) or not address:
            raise InvalidInstance(f"'address' must be a non-empty string, got {address!r}")
        port = _optional_port(doc, "port")
        ssl_port = _optional_port(doc, "sslPort")
        metadata = _metadata_from(doc.get("payload"))
        status = metadata.get(_STATUS_KEY, "UP").upper()
        if status not in _SERVED_STATUSES:
            raise InstanceSkipped(f"instance_status is {metadata[_STATUS_KEY]!r}, not UP")
        host = address
        endpoint = _endpoint(doc)
        if endpoint is not None:
            # What Curator's own clients connect to: it names the host and one port, and whether it is TLS.
            uri_scheme, host, uri_port = endpoint
            if uri_scheme == "https":
                ssl_port, port = uri_port, None if port == uri_port else port
            else:
                port, ssl_port = uri_port, None if ssl_port == uri_port else ssl_port
        # A "scheme" metadata entry (written by hand, or by old zklb versions) names the plain port's.
        forced = metadata.pop(_SCHEME_KEY, None)
        if forced is not None and forced not in SCHEMES:
            raise InvalidInstance(f"scheme must be one of {sorted(SCHEMES)}, got {forced!r}")
        if forced == "https" and port is not None:
            ssl_port, port = port, None
        if port is None and ssl_port is None:
            raise InvalidInstance("neither 'port' nor 'sslPort' (nor a uriSpec with a port) is set")
        weight = check_weight(metadata.pop(_WEIGHT_KEY, "1"))
        scheme, main = ("http", port) if port is not None else ("https", ssl_port)
        assert main is not None  # one of the two is set (checked above)
        return ServiceInstance(
            id=name,
            host=host,
            port=main,
            scheme=scheme,
            weight=weight,
            metadata=metadata,
            registered_at=_registered_at(doc),
            ssl_port=ssl_port,
        )
