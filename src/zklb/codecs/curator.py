"""Apache Curator x-discovery's JSON: the registry format zklb writes and reads by default.

Curator, Spring Cloud Zookeeper and Dubbo 3 write this format, so zklb serves their instances, and Java
readers using Curator's ``ServiceDiscovery`` with payload type ``Object`` or ``Map`` see zklb's. (Spring
Cloud Zookeeper's reader insists on its own payload class, so it cannot read instances without that
``@class``; see docs/registry-format.md.)

Each instance is an ephemeral znode ``/<root>/<service>/<id>`` holding::

    {"name": "api", "id": "<id>", "address": "10.0.0.2", "port": 8080, "sslPort": null,
     "payload": {"metadata": {"weight": "3", "zone": "a"}}, "registrationTimeUTC": 1700000000000,
     "serviceType": "DYNAMIC", "uriSpec": {"parts": [...]}}

Weight and other metadata live in ``payload.metadata`` as strings (Spring Cloud LoadBalancer's
convention). No ``@class`` is written in the payload: a Curator reader without that class on its
classpath fails its whole query. See docs/registry-format.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from zklb.errors import InvalidInstance
from zklb.instance import SCHEMES, ServiceInstance, check_weight

__all__ = ["MAX_ZNODE_BYTES", "CuratorCodec"]

#: Znodes larger than this are rejected unread: no instance needs more, and it bounds a bad actor.
MAX_ZNODE_BYTES = 64 * 1024

_WEIGHT_KEY = "weight"
_SCHEME_KEY = "scheme"


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


# In Curator's URI specs {port} is always the plain port; an https instance's port is {ssl-port}.
_HTTP_URI_SPEC = _uri_spec("port")
_HTTPS_URI_SPEC = _uri_spec("ssl-port")


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


class CuratorCodec:
    """Encodes and decodes Curator x-discovery JSON (see the module docstring)."""

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """The znode data for ``instance``: https instances use ``sslPort``, http ones ``port``."""
        metadata = dict(instance.metadata)
        metadata[_WEIGHT_KEY] = str(instance.weight)
        registered = instance.registered_at or datetime.now(UTC)
        secure = instance.scheme == "https"
        doc = {
            "name": service,
            "id": instance.id,
            "address": instance.host,
            "port": None if secure else instance.port,
            "sslPort": instance.port if secure else None,
            "payload": {"metadata": metadata},
            "registrationTimeUTC": int(registered.timestamp() * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": _HTTPS_URI_SPEC if secure else _HTTP_URI_SPEC,
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The instance in znode ``name``; `InvalidInstance` if malformed.

        None when it is disabled (``enabled`` false). An instance whose Spring Cloud ``instance_status``
        metadata is ``OUT_OF_SERVICE``/``DOWN`` is returned (it is registered) and is ``draining``:
        balancers count it but send it no new requests. Unknown fields are ignored; a missing
        ``enabled`` means enabled; the znode name is the id.
        """
        if data is None or len(data) == 0:
            raise InvalidInstance("znode has no data")
        if len(data) > MAX_ZNODE_BYTES:
            raise InvalidInstance(f"znode data is {len(data)} bytes, more than the {MAX_ZNODE_BYTES} allowed")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInstance(f"znode data is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidInstance(f"znode data must be a JSON object, got {type(doc).__name__}")
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidInstance(f"'enabled' must be true or false, got {enabled!r}")
        if not enabled:
            return None
        address = doc.get("address")
        if not isinstance(address, str) or not address:
            raise InvalidInstance(f"'address' must be a non-empty string, got {address!r}")
        port = _optional_port(doc, "port")
        ssl_port = _optional_port(doc, "sslPort")
        metadata = _metadata_from(doc.get("payload"))
        # Curator's own URI spec resolves {scheme} to https whenever sslPort is set.
        scheme = metadata.pop(_SCHEME_KEY, None) or ("https" if ssl_port is not None else "http")
        if scheme not in SCHEMES:
            raise InvalidInstance(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
        chosen = (ssl_port if ssl_port is not None else port) if scheme == "https" else port
        if chosen is None:
            raise InvalidInstance(f"no {'sslPort' if scheme == 'https' else 'port'} for a {scheme} instance")
        weight = check_weight(metadata.pop(_WEIGHT_KEY, "1"))
        registered_at = None
        millis = doc.get("registrationTimeUTC")
        if millis is not None:
            if isinstance(millis, bool) or not isinstance(millis, int):
                raise InvalidInstance(f"'registrationTimeUTC' must be epoch milliseconds, got {millis!r}")
            try:
                registered_at = datetime.fromtimestamp(millis / 1000, UTC)
            except (OverflowError, OSError, ValueError):
                raise InvalidInstance(f"'registrationTimeUTC' {millis!r} is out of range") from None
        return ServiceInstance(
            id=name,
            host=address,
            port=chosen,
            scheme=scheme,
            weight=weight,
            metadata=metadata,
            registered_at=registered_at,
        )
