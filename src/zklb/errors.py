"""The exceptions zklb raises.

Every error zklb raises on purpose derives from one root::

    ZklbError
    ├── InvalidInstance        a URL, host, port, weight or znode payload that is not a valid instance
    │   └── InstanceSkipped    a well-formed znode whose instance asks not to be served (disabled, not UP)
    ├── UnknownStrategy        a strategy name that is not registered (the message lists the valid ones)
    ├── NoServerAvailable      the pool is empty, or every candidate was excluded
    │   ├── zklb.httpx.NoServerAvailableError      also an httpx.ConnectError (raised by the transports)
    │   └── zklb.requests.NoServerAvailableError   also a requests.ConnectionError (the adapter)
    ├── RegistryError          ZooKeeper refused or failed a registry operation, or did not answer in time
    ├── ClosedError            a component was used after ``close()``
    ├── ForkError              a component on a borrowed KazooClient was used in the child of a fork
    └── ConfigurationError     a setting (a policy, a timeout) out of its range

ZooKeeper (kazoo) errors are translated at the edge, in the registry and watcher modules, with
``raise ... from exc`` so the original stays on ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ConfigurationError",
    "ForkError",
    "InstanceSkipped",
    "InvalidInstance",
    "NoServerAvailable",
    "RegistryError",
    "UnknownStrategy",
    "ZklbError",
]


class ZklbError(Exception):
    """Root of every exception zklb raises on purpose."""


class InvalidInstance(ZklbError, ValueError):
    """A service instance could not be built: bad URL, host, port, scheme, weight or znode payload."""


class InstanceSkipped(InvalidInstance):
    """A well-formed znode whose instance asks not to be served: disabled, not ``UP``, not ``ALIVE``.

    Raised by codecs; the watcher leaves the instance out of the pool and logs the reason once.
    """


class UnknownStrategy(ZklbError, LookupError):
    """A strategy name that no strategy is registered under."""

    def __init__(self, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"unknown strategy {name!r}; valid names: {', '.join(self.known)}")


class NoServerAvailable(ZklbError, LookupError):
    """No instance can serve: the pool is empty or every instance was excluded."""

    def __init__(
        self, service: str, root: str = "/services", reason: str = "no instances registered"
    ) -> None:
        self.service = service
        self.root = root
        self.reason = reason
        path = f"{root.rstrip('/')}/{service}"
        super().__init__(f"no server available for service {service!r} at {path}: {reason}")


class RegistryError(ZklbError):
    """ZooKeeper refused or failed a registry operation (create, update, delete)."""


class ClosedError(ZklbError, RuntimeError):
    """A component was used after ``close()``; components cannot be reopened."""


class ForkError(ZklbError, RuntimeError):
    """A component made before ``os.fork()`` on a borrowed `KazooClient` was used in the child.

    The parent's ZooKeeper session is not the child's: make the component after the fork, or give it a
    hosts string (or use `zklb.connect`), and zklb reconnects in the child by itself.
    """


class ConfigurationError(ZklbError, ValueError):
    """A setting out of its range: a health policy, a timeout, a delay. The message names the setting."""
