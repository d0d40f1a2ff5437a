"""Holding a lease for as long as urllib3 reads a response: the requests adapter's in-flight count.

Private: `zklb.requests.LoadBalancedAdapter` hooks each urllib3 response it hands back, because that
is the only object that sees both the end of the body and the close; the instance counts the request
as in flight until one of them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from urllib3.response import HTTPResponse

from zklb._attempts import end_lease
from zklb.lease import Lease

__all__ = ["ResponseLease"]

_HOOKED = ("close", "read", "read_chunked", "release_conn")


class ResponseLease:
    """Releases a lease when urllib3 is done with a response: body read to the end, or closed.

    urllib3 calls ``self.release_conn()`` when a read reaches the end of the body (or fails) and
    requests calls ``raw.close()`` / ``raw.release_conn()`` from ``Response.close()``. Instance
    attributes shadow the class's methods, so these hooks see every call, urllib3's own included; they
    call the class's implementation and are removed on release. A read that raises marks a failure;
    a ``release_conn`` from inside a read waits for the read to end, so the failure is counted first.
    A read cut by an interrupt, or a close while one propagates, records nothing (see `end_lease`).

    A response dropped unclosed is abandoned: its lease is cancelled (no outcome, no latency) when it
    is collected. The hook holds the response only weakly (a strong reference would make a cycle
    that only a full collection frees, by which time urllib3 may think itself closed and never call
    ``close``), so a response dropped outside a cycle is collected at once: io's finaliser then calls
    ``close`` after setting ``_finalizing``, which tells it from a caller's close. If the response is
    already gone (cleared in a cycle) or never closed, the hook's own ``__del__`` cancels the lease
    when the response's attributes, and with them the hook, go. Nothing on these paths takes a lock.

    ``holder``: the adapter's set of leases still out, which ``LoadBalancedAdapter.close`` ends.
    """

    __slots__ = ("_cancelled", "_holder", "_lease", "_pending", "_raw", "_reading")

    def __init__(self, raw: HTTPResponse, lease: Lease, holder: set[Lease]) -> None:
        self._raw = weakref.ref(raw)
        self._lease = lease
        self._holder = holder
        self._reading = 0
        self._pending = False
        self._cancelled = False

    @classmethod
    def attach(cls, raw: HTTPResponse, lease: Lease, holder: set[Lease]) -> None:
        holder.add(lease)
        hook = cls(raw, lease, holder)
        vars(raw).update(
            close=hook.close, read=hook.read, read_chunked=hook.read_chunked, release_conn=hook.release_conn
        )

    def _target(self) -> HTTPResponse:
        raw = self._raw()
        if raw is None:  # called from a finaliser in the cycle that held it: nothing left to act on
            self._abandon()
            raise ValueError("I/O operation on a response that has been collected")
        return raw

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        raw = self._target()
        self._reading += 1
        try:
            return type(raw).read(raw, *args, **kwargs)
        except Exception:
            self._lease.report(False)
            raise
        except BaseException:
            # KeyboardInterrupt mid-body: urllib3 releases the connection on the way out (and with it,
            # in _end_read, the lease), which must not count the interrupted read as a success.
            self._cancelled = True
            raise
        finally:
            self._end_read(raw)

    def read_chunked(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        raw = self._target()
        self._reading += 1
        try:
            yield from type(raw).read_chunked(raw, *args, **kwargs)
        except Exception:
            self._lease.report(False)
            raise
        except GeneratorExit:  # a reader that stops early is no failure of the server
            raise
        except BaseException:
            self._cancelled = True
            raise
        finally:
            self._end_read(raw)

    def release_conn(self) -> None:
        raw = self._raw()
        if raw is None:
            self._abandon()
            return
        try:
            type(raw).release_conn(raw)
        finally:
            if self._reading:
                self._pending = True
            else:
                self._done(raw)

    def close(self) -> None:
        raw = self._raw()
        if raw is None:  # io's finaliser, after the collection of a cycle cleared the reference
            self._abandon()
            return
        try:
            type(raw).close(raw)
        finally:
            if vars(raw).get("_finalizing"):  # set by io's finaliser: the response was dropped unclosed
                self._cancelled = True
            self._done(raw)

    def _end_read(self, raw: HTTPResponse) -> None:
        self._reading -= 1
        if self._pending and not self._reading:
            self._done(raw)

    def _done(self, raw: HTTPResponse) -> None:
        attrs = vars(raw)
        for name in _HOOKED:
            attrs.pop(name, None)
        self._holder.discard(self._lease)
        end_lease(self._lease, self._cancelled)

    def _abandon(self) -> None:
        # Finaliser-safe: a set operation and Lease.cancel(), neither of which blocks.
        self._holder.discard(self._lease)
        self._lease.cancel()

    def __del__(self) -> None:
        self._abandon()  # released already (the usual case): does nothing
