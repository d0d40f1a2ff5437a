"""Finagle/Aurora ServerSet members: the registry format of Twitter's Finagle and Apache Aurora.

A service is a znode whose children ``member_<sequence>`` are EPHEMERAL_SEQUENTIAL znodes (ZooKeeper
picks the name) holding::

    {"serviceEndpoint": {"host": "10.0.0.2", "port": 31337},
     "additionalEndpoints": {"http": {"host": "10.0.0.2", "port": 31338},
                             "https": {"host": "10.0.0.2", "port": 31339}},
     "status": "ALIVE", "shard": 0}

Only ``ALIVE`` members are served. By default a balancer reaches ``serviceEndpoint``; with
``ServerSetCodec(endpoint="http")`` it reaches the named additional endpoint instead. An additional
endpoint called ``https`` on the same host is the instance's TLS port. ServerSets carry no weight
(every member weighs 1) and no metadata but the shard (``metadata["shard"]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from zklb.codecs._json import load_object
from zklb.errors import ConfigurationError, InstanceSkipped, InvalidInstance
from zklb.instance import ServiceInstance, check_port

__all__ = ["MEMBER_PREFIX", "ServerSetCodec"]

#: The name prefix of member znodes (ZooKeeper appends a 10-digit sequence number).
MEMBER_PREFIX = "member_"
_ALIVE = "ALIVE"
_TLS_ENDPOINT = "https"
_SHARD_KEY = "shard"


def _endpoint(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, dict):
        raise InvalidInstance(f"{where} must be an object {{'host', 'port'}}, got {value!r}")
    host, port = value.get("host"), value.get("port")
    if not isinstance(host, str) or not host:
        raise InvalidInstance(f"{where}.host must be a non-empty string, got {host!r}")
    try:
        return host, check_port(port)
    except InvalidInstance:
        raise InvalidInstance(f"{where}.port must be an integer between 1 and 65535, got {port!r}") from None


class ServerSetCodec:
    """Encodes and decodes ServerSet members (see the module docstring).

    ``endpoint``: None balances over each member's ``serviceEndpoint``; a name balances over that
    additional endpoint (members without it are not served). Members are created sequential, so a
    registration's id is the znode name ZooKeeper gives it (``member_0000000007``), and a new one after
    a session expiry re-creates it.
    """

    __slots__ = ("endpoint",)

    #: ZooKeeper names the znodes: ``znode_name`` is the prefix it appends a sequence number to.
    sequential = True

    def __init__(self, endpoint: str | None = None) -> None:
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise ConfigurationError(f"endpoint must be None or an endpoint name, got {endpoint!r}")
        self.endpoint = endpoint

    def znode_name(self, service: str, instance: ServiceInstance) -> str:
        """``member_``: the prefix of every member (ZooKeeper adds the sequence number)."""
        return MEMBER_PREFIX

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """A member: ``serviceEndpoint`` is the instance, ``http``/``https`` additional endpoints its ports.

        A draining instance is written ``STOPPING`` (no longer served); the ``shard`` metadata entry, if
        an integer, is the shard (else 0). Other metadata and the weight have no place in a ServerSet.
        """
        host = instance.host
        additional: dict[str, dict[str, object]] = {}
        if instance.scheme == "http":
            additional["http"] = {"host": host, "port": instance.port}
        if instance.ssl_port is not None:
            additional[_TLS_ENDPOINT] = {"host": host, "port": instance.ssl_port}
        if self.endpoint is not None:
            additional.setdefault(self.endpoint, {"host": host, "port": instance.port})
        shard = instance.metadata.get(_SHARD_KEY, "0")
        doc = {
            "serviceEndpoint": {"host": host, "port": instance.port},
            "additionalEndpoints": additional,
            "status": "STOPPING" if instance.draining else _ALIVE,
            "shard": int(shard) if shard.isdigit() else 0,
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The member in znode ``name``; `InstanceSkipped` unless an ``ALIVE`` member with the endpoint."""
        if not name.startswith(MEMBER_PREFIX):
            raise InstanceSkipped(f"not a ServerSet member (its name does not start with {MEMBER_PREFIX!r})")
        doc = load_object(data)
        status = doc.get("status")
        if not isinstance(status, str):
            raise InvalidInstance(f"'status' must be a string, got {status!r}")
        if status != _ALIVE:
            raise InstanceSkipped(f"status is {status!r}, not ALIVE")
        raw_additional = doc.get("additionalEndpoints") or {}
        if not isinstance(raw_additional, dict):
            raise InvalidInstance(f"'additionalEndpoints' must be an object, got {raw_additional!r}")
        additional: Mapping[str, object] = raw_additional
        if self.endpoint is None:
            host, port = _endpoint(doc.get("serviceEndpoint"), "serviceEndpoint")
        elif self.endpoint in additional:
            host, port = _endpoint(additional[self.endpoint], f"additionalEndpoints.{self.endpoint}")
        else:
            raise InstanceSkipped(f"no additional endpoint {self.endpoint!r}")
        tls = self.endpoint == _TLS_ENDPOINT
        ssl_port = None
        if not tls and _TLS_ENDPOINT in additional:
            tls_host, tls_port = _endpoint(additional[_TLS_ENDPOINT], f"additionalEndpoints.{_TLS_ENDPOINT}")
            ssl_port = tls_port if tls_host == host else None  # another host's TLS port is another server
        metadata = {}
        shard = doc.get(_SHARD_KEY)
        if shard is not None:
            if isinstance(shard, bool) or not isinstance(shard, int):
                raise InvalidInstance(f"'shard' must be an integer, got {shard!r}")
            metadata[_SHARD_KEY] = str(shard)
        return ServiceInstance(
            id=name,
            host=host,
            port=port,
            scheme="https" if tls else "http",
            metadata=metadata,
            ssl_port=ssl_port,
        )
