"""`Lease`: one in-flight request on one instance, from ``lb.acquire()`` until it is released."""

from __future__ import annotations

from contextvars import ContextVar, Token
from time import perf_counter
from types import TracebackType
from typing import Protocol

from zklb.instance import ServiceInstance

__all__ = ["Lease", "current_lease"]


class _Balancer(Protocol):
    """What a lease needs of its balancer: the one call that ends a request."""

    def _release(
        self,
        server: ServiceInstance,
        success: bool,
        latency: float | None,
        counted: bool = True,
        record: bool = True,
    ) -> object: ...


# The innermost lease entered in this thread or task, so that ``lb.report()`` can mark it.
current_lease: ContextVar[Lease | None] = ContextVar("zklb_current_lease", default=None)


class Lease:
    """One in-flight request on one instance, from ``acquire()`` until release.

    ``with lb.acquire() as server:`` (or ``async with``) releases on leaving the block: an exception in
    the block counts as a failure (and propagates), otherwise a success unless ``report(False)`` said so.
    Cancellation and interrupts (exceptions that are not ``Exception``) record no outcome. Outside a
    ``with`` block, call ``release()`` or ``cancel()`` yourself. Releasing twice does nothing.
    """

    # Kept lean on purpose: one is made per request, and every attribute set is on the hot path.
    __slots__ = ("_balancer", "_started", "_success", "_token", "server")

    def __init__(self, balancer: _Balancer, server: ServiceInstance, started: float) -> None:
        self.server = server
        self._balancer: _Balancer | None = balancer  # None once released
        self._started = started
        self._success: bool | None = None
        self._token: Token[Lease | None] | None = None

    @property
    def released(self) -> bool:
        """True once the lease has been released."""
        return self._balancer is None

    def report(self, success: bool) -> None:
        """Set the outcome to record on release (e.g. ``False`` for a 5xx that raised nothing)."""
        self._success = success

    def release(self, success: bool | None = None) -> None:
        """End the request: its in-flight count goes down and its outcome and latency are recorded."""
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        if success is None:
            success = self._success is not False
        balancer._release(self.server, success, perf_counter() - self._started)

    def cancel(self) -> None:
        """End the request without recording an outcome (it was abandoned: cancelled, interrupted)."""
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        balancer._release(self.server, True, None, record=False)

    def __enter__(self) -> ServiceInstance:
        self._token = current_lease.set(self)
        return self.server

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                current_lease.reset(token)
            except ValueError:  # exited in another context than entered (e.g. a moved generator)
                pass
        balancer = self._balancer
        if balancer is None:
            return
        self._balancer = None
        if exc_type is not None and not issubclass(exc_type, Exception):
            # CancelledError, KeyboardInterrupt, GeneratorExit: nothing learnt about the server.
            balancer._release(self.server, True, None, record=False)
            return
        balancer._release(
            self.server, exc_type is None and self._success is not False, perf_counter() - self._started
        )

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "released" if self._balancer is None else "in flight"
        return f"<Lease {self.server.url} {state}>"
