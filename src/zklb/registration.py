"""`Registration`: the handle onto one registered instance, its desired data and its close.

What it owns is *desired* state (the instance, the bytes its znode should hold); the `Registry` that
made it reconciles ZooKeeper with that state (see `zklb.registry`). A registration only changes its
own desired state and asks its registry to apply it, waiting with a deadline.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol, Self

from zklb._aio import run_off_loop
from zklb._zk import check_timeout, join_path
from zklb.codecs import Codec, is_sequential, service_path, znode_name
from zklb.errors import ClosedError, ForkError
from zklb.instance import ServiceInstance, check_weight

__all__ = ["DRAINING_STATUS", "Registration"]

#: The ``instance_status`` metadata value `Registration.drain` writes (Spring Cloud Zookeeper's word).
DRAINING_STATUS = "OUT_OF_SERVICE"


def _draining(metadata: Mapping[str, str]) -> Mapping[str, str]:
    return {**metadata, "instance_status": DRAINING_STATUS}


class _Owner(Protocol):
    """What a registration needs of the registry that made it."""

    root: str
    codec: Codec

    def _apply(self, registration: Registration, timeout: float | None) -> bool: ...

    def _deregister(self, registration: Registration) -> None: ...


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Registration:
    """One registered instance: its ephemeral znode, kept present (and up to date) until ``close()``.

    Made by `Registry.register`; use it as a context manager or call ``close()``.

    With a sequential codec (ServerSet) ZooKeeper names the znode: ``path`` and ``instance.id`` are
    those of the znode it holds now, and change when it is re-created (after a session expiry).
    """

    def __init__(self, registry: _Owner, service: str, instance: ServiceInstance) -> None:
        self._registry = registry
        self.service = service
        codec = registry.codec
        base = service_path(codec, registry.root, service)
        name = znode_name(codec, service, instance)
        self.sequential = is_sequential(codec)
        self._data = codec.encode(service, instance)
        if self.sequential:
            self.prefix = join_path(base, name)
            # The registry's handle on it: never a znode (a sequential name ends in digits, not "}").
            self.key = f"{self.prefix}{{{instance.id}}}"
            self._path: str | None = None
        else:
            self.prefix = self.key = self._path = join_path(base, name)
            if name != instance.id:
                instance = dataclasses.replace(instance, id=self._seen_id(name, instance))
        self._instance = instance
        # The session in which a create of this (sequential) registration may have landed unseen.
        # (session, data) of each sequential create whose answer was lost: it may have landed, holding
        # the data of that moment (an update() or drain() since does not change the lost znode's data).
        self._uncertain: tuple[int, frozenset[bytes]] | None = None
        self._state = _State.OPEN
        # (session id, data) last confirmed in ZooKeeper by a reconcile pass; None: not confirmed.
        self._applied: tuple[int, bytes] | None = None
        self._error: str | None = None  # why the last pass could not confirm it, for RegistryError
        self._refused = False  # a pass found that no retry can create it (_error says why)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._parents = False  # made before a fork, in this process's parent: its znode is not ours

    @property
    def path(self) -> str:
        """The znode that holds the registration (for a sequential one not created yet, its handle)."""
        return self._path if self._path is not None else self.key

    def _seen_id(self, name: str, instance: ServiceInstance) -> str:
        """The id readers give znode ``name`` (the codec decides), so that balancers find it by id."""
        try:
            seen = self._registry.codec.decode(self.service, name, self._data)
        except Exception:  # a codec that cannot read its own output: keep the id given
            return instance.id
        return instance.id if seen is None else seen.id

    def _created(self, path: str) -> None:
        """A sequential create made ``path``: the registration's znode (and id) from now on."""
        with self._lock:
            self._path = path
            self._uncertain = None
            name = path.rsplit("/", 1)[-1]
            self._instance = dataclasses.replace(self._instance, id=self._seen_id(name, self._instance))

    def _forget_znode(self) -> None:
        """Its sequential znode is gone (a session expiry, a delete): the next pass creates a new one."""
        with self._lock:
            self._path = None

    @property
    def instance(self) -> ServiceInstance:
        """The instance as it is (or will be, once ZooKeeper is reachable) in the registry."""
        return self._instance

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._state is _State.CLOSED

    @property
    def draining(self) -> bool:
        """True once ``drain()`` marked the instance out of service."""
        return self._instance.draining

    def update(
        self,
        *,
        weight: int | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Change the weight and/or metadata of this instance in place (the same znode, ``set_data``).

        Invalid values raise `InvalidInstance` and change nothing. Waits up to ``timeout`` seconds
        (default: the registry's request timeout) for ZooKeeper to hold the new data and returns True;
        if it is unreachable, returns False and the data is written as soon as the session is back.
        """
        return self._change(weight, lambda current: current if metadata is None else metadata, timeout)

    def drain(self, *, timeout: float | None = None) -> bool:
        """Take the instance out of rotation without deregistering it: new requests stop, in-flight ones end.

        Writes ``instance_status = "OUT_OF_SERVICE"`` in the payload's metadata (which Spring Cloud
        Zookeeper's clients honour too); zklb balancers stop picking it and count it as draining.
        Returns as `update` does.
        """
        return self._change(None, _draining, timeout)

    def _change(
        self,
        weight: int | None,
        metadata: Callable[[Mapping[str, str]], Mapping[str, str]],
        timeout: float | None,
    ) -> bool:
        if timeout is not None:  # before anything changes: a bad argument changes nothing
            check_timeout("timeout", timeout, zero=True)
        self._set(weight, metadata)
        return self._registry._apply(self, timeout)

    def _mark_draining(self) -> None:
        """Desired state only: out of service (the registry drains many at once, in one pass)."""
        self._set(None, _draining)

    def _set(self, weight: int | None, metadata: Callable[[Mapping[str, str]], Mapping[str, str]]) -> None:
        """Change the desired data only; a reconcile pass writes it."""
        if self._parents:
            raise ForkError(
                f"registration {self.path} was made before os.fork() and belongs to the parent process; "
                "register again in the child if it needs a registration of its own"
            )
        if self.closed:
            raise ClosedError(f"registration {self.path} is closed")
        with self._lock:  # read, modify, write: concurrent update() and drain() both land
            current = self._instance
            updated = dataclasses.replace(
                current,
                weight=current.weight if weight is None else check_weight(weight),
                metadata=metadata(current.metadata),
            )
            data = self._registry.codec.encode(self.service, updated)
            self._instance, self._data = updated, data

    def close(self, drain: float = 0.0) -> None:
        """Delete the znode and stop maintaining it. Idempotent.

        With ``drain`` seconds, first `drain` and wait that long (cut short if the registry closes),
        so that clients stop sending new requests while the ones in flight finish.

        In the child of a fork, a registration made before it is the parent's: closing it there only
        closes the handle, and the parent's znode stays.
        """
        check_timeout("drain", drain, zero=True)
        if self.closed:
            return
        if self._parents:
            self._state = _State.CLOSED
            return
        if drain > 0:
            self.drain()
            self._closing.wait(drain)
        self._state = _State.CLOSED
        self._registry._deregister(self)

    async def aclose(self, drain: float = 0.0) -> None:
        """`close` for asyncio: the drain's wait and the delete run off the event loop."""
        await run_off_loop(lambda: self.close(drain), "zklb-registration-close")

    def _mark_closed(self) -> None:
        """Closed by its registry (given up, or the registry closed): no more changes, drains cut short."""
        self._state = _State.CLOSED
        self._closing.set()

    def _after_fork_in_child(self) -> None:
        """Called by the registry in a fork's child: from now on this handle is the parent's."""
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._parents = True

    def confirmed(self) -> bool:
        """Whether ZooKeeper was seen holding this registration's latest desired data."""
        applied = self._applied
        return applied is not None and applied[1] == self._data

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        inst = self._instance
        return f"<Registration {self.path} {inst.url} weight={inst.weight} {self._state.value}>"
