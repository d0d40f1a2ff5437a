"""The public face: exactly these names, each documented, each importable from zklb."""

from __future__ import annotations

import zklb

PUBLIC = {
    "ClosedError",
    "Codec",
    "ConfigurationError",
    "ConsistentHash",
    "Discovery",
    "ForkError",
    "CuratorCodec",
    "DubboCodec",
    "InstanceSkipped",
    "HealthPolicy",
    "InstanceStats",
    "InvalidInstance",
    "Lease",
    "LeastConnections",
    "LeastRequest",
    "LoadBalancer",
    "Membership",
    "NoServerAvailable",
    "PeakEwma",
    "Picker",
    "PoolStats",
    "ExponentialBackoff",
    "Registration",
    "Registry",
    "RegistryError",
    "RetryBudget",
    "RetryPolicy",
    "RoundRobin",
    "ServerSetCodec",
    "ServiceInstance",
    "ServiceWatcher",
    "SlowStart",
    "Strategy",
    "UnknownStrategy",
    "WeightedRandom",
    "WeightedRoundRobin",
    "ZklbError",
    "__version__",
    "connect",
    "register_strategy",
    "strategy_names",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(zklb.__all__) == PUBLIC


def test_every_public_name_exists_and_is_documented() -> None:
    for name in PUBLIC - {"__version__"}:
        obj = getattr(zklb, name)
        assert obj.__doc__, name


def test_errors_share_one_root() -> None:
    for name in (
        "ClosedError",
        "ConfigurationError",
        "ForkError",
        "InvalidInstance",
        "NoServerAvailable",
        "RegistryError",
        "UnknownStrategy",
    ):
        assert issubclass(getattr(zklb, name), zklb.ZklbError)
