"""zklb: client-side load balancing for Python services that find each other through ZooKeeper.

Servers register as ephemeral znodes (Apache Curator's x-discovery format); clients watch the registry
and pick a server per request with a pluggable strategy::

    import zklb

    with zklb.connect("127.0.0.1:2181") as zk:           # one session for every service
        lb = zk.balancer("api", strategy="least_connections")
        with lb.acquire() as server:
            ...  # send the request to server.url

See README.md and docs/ for the rest.
"""

from zklb.balancer import Lease, LoadBalancer
from zklb.codecs import Codec, CuratorCodec, DubboCodec, ServerSetCodec
from zklb.connection import Discovery, connect
from zklb.discovery import ServiceWatcher
from zklb.errors import (
    ClosedError,
    ConfigurationError,
    ForkError,
    InstanceSkipped,
    InvalidInstance,
    NoServerAvailable,
    RegistryError,
    UnknownStrategy,
    ZklbError,
)
from zklb.health import HealthPolicy, PoolStats
from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.registry import Registration, Registry
from zklb.retry import ExponentialBackoff, RetryBudget, RetryPolicy
from zklb.slow_start import SlowStart
from zklb.stats import InstanceStats
from zklb.strategies import (
    ConsistentHash,
    LeastConnections,
    LeastRequest,
    PeakEwma,
    Picker,
    RoundRobin,
    Strategy,
    WeightedRandom,
    WeightedRoundRobin,
    register_strategy,
    strategy_names,
)

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "Codec",
    "ConfigurationError",
    "ConsistentHash",
    "CuratorCodec",
    "Discovery",
    "DubboCodec",
    "ExponentialBackoff",
    "ForkError",
    "HealthPolicy",
    "InstanceSkipped",
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
]
