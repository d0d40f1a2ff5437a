"""Znode formats: each codec turns a znode's name and bytes into a `ServiceInstance` and back.

Built in, chosen by name wherever a ``codec=`` is taken (`LoadBalancer`, `ServiceWatcher`, `Registry`):

- ``"curator"`` (the default): Apache Curator x-discovery JSON, which Curator, Spring Cloud Zookeeper
  and Dubbo 3 write (`CuratorCodec`);
- ``"serverset"``: Finagle/Aurora ServerSet members (`ServerSetCodec`);
- ``"dubbo"``: Dubbo 2 provider URLs (`DubboCodec`).

A codec decides three things: where a service's instances live (``service_path``), what a znode holds
(``encode``/``decode``) and how a written znode is named (``znode_name``, ``sequential``). Only
``encode`` and ``decode`` are required of a codec object of one's own; the layout defaults to Curator's
(``/<root>/<service>/<instance id>``). See docs/registry-format.md.
"""

from __future__ import annotations

from typing import Protocol

from zklb._zk import join_path
from zklb.codecs.curator import CuratorCodec
from zklb.codecs.dubbo import DubboCodec
from zklb.codecs.serverset import ServerSetCodec
from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "CuratorCodec",
    "DubboCodec",
    "ServerSetCodec",
    "is_sequential",
    "resolve_codec",
    "service_path",
    "znode_name",
]

#: The names ``codec=`` accepts.
CODEC_NAMES = ("curator", "dubbo", "serverset")


class Codec(Protocol):
    """How instances are stored in znodes.

    Optional members, with Curator's layout as the default when absent:
    ``service_path(root, service) -> str`` (the znode whose children are the instances),
    ``znode_name(service, instance) -> str`` (the child a registry creates; with ``sequential`` True,
    the prefix ZooKeeper appends a sequence number to).
    """

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """The znode data for ``instance`` of ``service``."""
        ...

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The instance stored in znode ``name``.

        Raises `zklb.errors.InvalidInstance` saying what is wrong when the znode is malformed, and
        `zklb.errors.InstanceSkipped` (or returns None) when it asks not to be served.
        """
        ...


def resolve_codec(codec: str | Codec | None) -> Codec:
    """The codec named ``codec`` (a new one), the default (None: Curator), or a codec object unchanged.

    An unknown name, or an object without ``encode`` and ``decode``, raises `ConfigurationError`.
    """
    if codec is None or codec == "curator":
        return CuratorCodec()
    if codec == "serverset":
        return ServerSetCodec()
    if codec == "dubbo":
        return DubboCodec()
    if isinstance(codec, str):
        raise ConfigurationError(f"unknown codec {codec!r}; valid names: {', '.join(CODEC_NAMES)}")
    usable = callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))
    if isinstance(codec, type) or not usable:
        raise ConfigurationError(
            f"codec must be one of {', '.join(CODEC_NAMES)} or an object with encode() and decode(), "
            f"got {codec!r}"
        )
    return codec


def service_path(codec: Codec, root: str, service: str) -> str:
    """The znode whose children are ``service``'s instances, as ``codec`` lays them out."""
    layout = getattr(codec, "service_path", None)
    if layout is None:
        return join_path(root, service)
    path: str = layout(root, service)
    return path


def znode_name(codec: Codec, service: str, instance: ServiceInstance) -> str:
    """The name a registry gives ``instance``'s znode (a prefix, for a sequential codec)."""
    naming = getattr(codec, "znode_name", None)
    if naming is None:
        return instance.id
    name: str = naming(service, instance)
    return name


def is_sequential(codec: Codec) -> bool:
    """Whether ``codec``'s znodes are created EPHEMERAL_SEQUENTIAL (ZooKeeper picks the name)."""
    return bool(getattr(codec, "sequential", False))
