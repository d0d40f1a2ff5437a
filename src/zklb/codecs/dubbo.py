"""Dubbo 2 provider URLs: the ZooKeeper registry layout of Apache Dubbo 2.x.

A service (a Java interface) lives at ``/<root>/<interface>`` (root ``/dubbo`` in Dubbo) with four
children: ``providers``, ``consumers``, ``configurators`` and ``routers``. Each provider is one
ephemeral znode under ``providers`` whose *name* is its URL, URL-encoded (Java's ``URLEncoder``)::

    /dubbo/com.foo.DemoService/providers/dubbo%3A%2F%2F10.0.0.2%3A20880%2Fcom.foo.DemoService%3F...
        decoded: dubbo://10.0.0.2:20880/com.foo.DemoService?application=demo&interface=com.foo.DemoService
                 &side=provider&timestamp=1700000000000&weight=100&warmup=600000

The znode's data is ignored (Dubbo 2.7 writes the provider's IP there). Only ``providers`` is read;
a provider with ``enabled=false`` or ``disabled=true`` is not served, nor one whose ``category`` or
``side`` says it is not a provider. An instance's id is ``host:port-<digest of the name>``. The
weight is the URL's ``weight`` (default 100, Dubbo's).
Dubbo's warm-up becomes slow start: ``registered_at`` is the URL's ``timestamp``, and the instance's own
slow-start window (metadata ``slow_start_window``, seconds; see `zklb.slow_start`) is its ``warmup``
(Dubbo's default 10 minutes when absent); ``metadata["warmup"]`` keeps the milliseconds. A balancer with
this codec ramps new providers up by default (`DUBBO_SLOW_START`), as Dubbo's own consumers do. Every
other URL parameter is in the metadata, with ``protocol`` and ``path``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode, urlsplit

from zklb._zk import join_path
from zklb.errors import InstanceSkipped, InvalidInstance
from zklb.instance import ServiceInstance, check_weight
from zklb.slow_start import WINDOW_METADATA, SlowStart

__all__ = ["DEFAULT_WARMUP_MS", "DEFAULT_WEIGHT", "DUBBO_SLOW_START", "DubboCodec"]

#: Dubbo's default provider weight.
DEFAULT_WEIGHT = 100
#: Dubbo's default warm-up, in milliseconds (10 minutes).
DEFAULT_WARMUP_MS = 600_000
#: The slow start a balancer with the Dubbo codec applies unless given one: Dubbo's linear ramp from
#: its timestamp over its warm-up, starting at 1 % of the weight (Dubbo's weight floor of 1 in 100).
DUBBO_SLOW_START = SlowStart(window=DEFAULT_WARMUP_MS / 1000, min_weight_percent=1.0, aggression=1.0)
# URL "protocols" Dubbo uses for what is not a provider (rules, overrides, consumers, empty markers).
_NOT_PROVIDERS = frozenset({"consumer", "override", "route", "empty", "condition", "script", "absent"})
_PROVIDERS = "providers"


def _flag(params: dict[str, str], key: str) -> bool | None:
    value = params.get(key)
    return None if value is None else value.strip().lower() == "true"


class DubboCodec:
    """Reads (and writes) Dubbo 2 provider URLs (see the module docstring).

    Written providers are named ``<protocol>://host:port/<interface>?...`` with the instance's weight,
    registration time and metadata as parameters (``protocol`` metadata, default ``http``/``https``).
    Dubbo keeps everything in the name, so ``Registration.update()`` and ``drain()`` change nothing a
    Dubbo reader sees: close the registration and register again.
    """

    __slots__ = ()

    def service_path(self, root: str, service: str) -> str:
        """``/<root>/<interface>/providers``."""
        return join_path(root, service, _PROVIDERS)

    def znode_name(self, service: str, instance: ServiceInstance) -> str:
        """The URL-encoded provider URL of ``instance``."""
        meta = dict(instance.metadata)
        protocol = meta.pop("protocol", instance.scheme)
        path = meta.pop("path", service)
        registered = instance.registered_at or datetime.now(UTC)
        params = {
            **meta,
            "category": _PROVIDERS,
            "interface": service,
            "side": "provider",
            "timestamp": str(int(registered.timestamp() * 1000)),
            "weight": str(instance.weight),
        }
        host = f"[{instance.host}]" if ":" in instance.host else instance.host
        query = urlencode(sorted(params.items()))
        return quote_plus(f"{protocol}://{host}:{instance.port}/{path}?{query}", safe="")

    def encode(self, service: str, instance: ServiceInstance) -> bytes:
        """The provider's IP, as Dubbo 2.7 writes it (readers ignore it)."""
        return instance.host.encode("ascii")

    def decode(self, service: str, name: str, data: bytes) -> ServiceInstance | None:
        """The provider named by znode ``name`` (``data`` is ignored)."""
        url = unquote_plus(name)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidInstance(f"znode name is not a provider URL: {exc}") from None
        protocol = parts.scheme.lower()
        if not protocol or not parts.hostname:
            raise InvalidInstance(f"znode name is not a provider URL: {url!r}")
        if protocol in _NOT_PROVIDERS:
            raise InstanceSkipped(f"a {protocol}:// URL is not a provider")
        if port is None:
            raise InvalidInstance(f"provider URL {url!r} has no port")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if params.get("category", _PROVIDERS) != _PROVIDERS or params.get("side", "provider") != "provider":
            raise InstanceSkipped("not a provider (category/side)")
        if _flag(params, "enabled") is False or _flag(params, "disabled") is True:
            raise InstanceSkipped("disabled (enabled=false or disabled=true)")
        raw_weight = params.pop("weight", str(DEFAULT_WEIGHT))
        if raw_weight.strip() in ("0", "-0"):
            raise InstanceSkipped("weight 0")
        weight = check_weight(raw_weight)
        registered_at = None
        stamp = params.get("timestamp")
        if stamp is not None:
            try:
                registered_at = datetime.fromtimestamp(int(stamp) / 1000, UTC)
            except (ValueError, OverflowError, OSError):
                raise InvalidInstance(f"'timestamp' must be epoch milliseconds, got {stamp!r}") from None
        warmup = params.get("warmup", str(DEFAULT_WARMUP_MS))
        if not warmup.isdigit():
            raise InvalidInstance(f"'warmup' must be milliseconds, got {warmup!r}")
        # A zero warm-up is no ramp: a window too short to matter (slow start reads 0 as "use the default").
        window = int(warmup) / 1000 or 0.001
        metadata = {
            **params,
            "protocol": protocol,
            "path": parts.path.lstrip("/"),
            "warmup": warmup,
            WINDOW_METADATA: f"{window:g}",
        }
        return ServiceInstance(
            id=_instance_id(parts.hostname, port, name),
            host=parts.hostname,
            port=port,
            scheme="https" if protocol == "https" else "http",
            weight=weight,
            metadata=metadata,
            registered_at=registered_at,
            ssl_port=None,
        )


def _instance_id(host: str, port: int, name: str) -> str:
    # Provider URLs are often longer than an id may be (method lists), and one host:port may provide
    # two versions of an interface: host:port plus a digest of the whole name is short and unique.
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{host}:{port}-{digest}"
