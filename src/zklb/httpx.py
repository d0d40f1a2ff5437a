"""httpx transports that send each request to a server picked by a `LoadBalancer`.

::

    import httpx
    from zklb.httpx import LoadBalancedTransport

    with httpx.Client(transport=LoadBalancedTransport(lb)) as client:
        client.get("http://api/users/1")   # "api" is lb.service: sent to one of its instances

A request whose host is the service name (or one of ``hosts=``) is sent to an instance: its scheme, host
and port are replaced, its path, query, headers and body kept. A request written ``https://`` is only
ever sent over TLS, to an instance's TLS port (``ssl_port``); if no instance has one, the transport
raises `NoServerAvailableError` saying so and sends nothing. (``http://`` goes to the instance's own
scheme and port: an https-only instance is reached over TLS.) Other hosts go to the inner transport
untouched, so an absolute redirect elsewhere goes where it points. The instance counts the request as
in flight until the response body is closed, not when the headers arrive.

Both transports share `_Balancing` (which requests, how to rewrite them, how an outcome is counted)
and ``zklb._attempts.Attempts`` (the retry loop); the sync and async classes only do the I/O.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:
    raise ImportError(
        "zklb.httpx needs httpx, which is not installed: pip install zklb[httpx]", name="httpx"
    ) from exc

import functools
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import TypeAlias

from zklb._attempts import Attempts, ClientHooks, end_lease
from zklb._httpx_rewrite import select
from zklb.balancer import Lease, LoadBalancer
from zklb.errors import NoServerAvailable, RegistryError
from zklb.instance import ServiceInstance
from zklb.retry import RetryPolicy, is_failure_status, resolve_policy
from zklb.strategies import HashKey

__all__ = ["AsyncLoadBalancedTransport", "LoadBalancedTransport", "NoServerAvailableError", "RequestKey"]

#: A request's hash key for ``consistent_hash``, from the request (None: no key for this one).
RequestKey: TypeAlias = Callable[[httpx.Request], HashKey | None]


class NoServerAvailableError(NoServerAvailable, httpx.ConnectError):
    """No instance to send a request to: both a `zklb.NoServerAvailable` and an ``httpx.ConnectError``.

    What the transports raise for an empty pool (or a pool whose every instance is excluded), so that
    code written for plain httpx, which handles ``httpx.ConnectError`` or ``httpx.HTTPError``, handles it
    too; ``request`` is the request the client sent, as on httpx's own errors.
    """

    def __init__(
        self,
        service: str,
        root: str = "/services",
        reason: str = "no instances registered",
        *,
        request: httpx.Request | None = None,
    ) -> None:
        NoServerAvailable.__init__(self, service, root, reason)
        httpx.ConnectError.__init__(self, str(self), request=request)


def _no_server(exc: NoServerAvailable, request: httpx.Request) -> NoServerAvailableError:
    return NoServerAvailableError(exc.service, exc.root, exc.reason, request=request)


def _status(response: httpx.Response) -> int:
    return response.status_code


def _close(response: httpx.Response) -> None:
    response.close()


async def _aclose(response: httpx.Response) -> None:
    await response.aclose()


_HOOKS: ClientHooks[httpx.Response] = ClientHooks(
    # A server that refused, dropped or stalled the request: another one may well answer. Errors that
    # would repeat anywhere (a malformed request, an unsupported scheme) are not in the list.
    retryable_errors=(httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError),
    status=_status,
    close=_close,
    aclose=_aclose,
    unsent=lambda error: isinstance(error, httpx.ConnectError | httpx.ConnectTimeout),
)


_readdress = select()


_TIMEOUT_PHASES = ("connect", "read", "write", "pool")


def _cut_timeout(timeout: object, time_left: float) -> dict[str, float]:
    """The client's per-phase timeouts (``request.extensions["timeout"]``), none longer than ``time_left``.

    httpx has no timeout for a whole request, only per phase (and per read), so each phase is cut: a
    phase that would outlast the deadline raises httpx's own timeout error for that phase.
    """
    given = timeout if isinstance(timeout, dict) else {}
    cut: dict[str, float] = {}
    for phase in _TIMEOUT_PHASES:
        seconds = given.get(phase)
        cut[phase] = time_left if seconds is None else min(seconds, time_left)
    return cut


class _Balancing:
    """The sync-agnostic part of both transports: which requests, rewritten how, counted how."""

    __slots__ = ("hosts", "key", "lb", "leases", "policy", "preserve_host")

    def __init__(
        self,
        lb: LoadBalancer,
        preserve_host: bool,
        retry: RetryPolicy | bool | None,
        hosts: Collection[str] | None,
        key: RequestKey | None = None,
    ) -> None:
        self.lb = lb
        self.key = key
        self.preserve_host = preserve_host
        self.policy = resolve_policy(retry)
        self.hosts = frozenset(h.lower() for h in (hosts if hosts is not None else (lb.service,)))
        # Leases of response bodies not closed yet, ended by the transport's close. A set: its add,
        # discard and pop are atomic, so the finalisers of dropped responses can use it without a lock.
        self.leases: set[Lease] = set()

    def balances(self, request: httpx.Request) -> bool:
        return request.url.host in self.hosts

    def attempts(self, request: httpx.Request) -> Attempts[httpx.Response]:
        # A ByteStream body is in memory and can be sent again; a generator or file cannot.
        replayable = isinstance(request.stream, httpx.ByteStream)
        key = None if self.key is None else self.key(request)
        tls = request.url.scheme == "https"  # written https://: only ever sent over TLS
        return Attempts(
            self.lb, self.policy, _HOOKS, method=request.method, replayable=replayable, key=key, tls=tls
        )

    def rewrite(
        self, request: httpx.Request, server: ServiceInstance, tls: bool, time_left: float | None
    ) -> httpx.Request:
        """A copy of ``request`` addressed to ``server`` (its TLS port if ``tls``); the original stays
        as the client built it, so the response, cookies and redirects keep the logical URL.
        ``time_left``: the policy's deadline, which no phase of this attempt may outlast."""
        extensions = request.extensions
        if time_left is not None:
            extensions = {**extensions, "timeout": _cut_timeout(extensions.get("timeout"), time_left)}
        return _readdress(request, server, tls, self.preserve_host, extensions)

    def settle(self, response: httpx.Response, lease: Lease) -> bool:
        """Count the status; True if the lease must now follow the body (released when it closes)."""
        if is_failure_status(response.status_code):
            lease.report(False)
        if isinstance(response.stream, httpx.ByteStream):
            # The body is already in memory (e.g. a mock transport): the server is done with us.
            lease.release()
            return False
        self.leases.add(lease)
        return True

    def end_leases(self) -> None:
        """End the lease of every body still open (the transport is closing): no outcome recorded."""
        leases = self.leases
        while leases:
            try:
                lease = leases.pop()
            except KeyError:  # emptied meanwhile, by bodies closing in other threads
                break
            lease.cancel()

    def describe(self, kind: str) -> str:
        retry = "off" if self.policy is None else repr(self.policy)
        return f"<{kind} {self.lb.service} hosts={sorted(self.hosts)} retry={retry}>"


class _LeasedStream(httpx.SyncByteStream):
    """A response body that releases its lease when closed; a read error marks a failure, and a
    cancellation or interrupt (during the read or while it closes) records nothing.

    A body dropped unclosed cancels its lease when it is collected (httpx's response and its bound
    stream refer to each other, so that is at the next collection of a cycle); ``__del__`` takes no
    lock. ``holder``: the transport's set of leases still out, which its close ends.
    """

    def __init__(self, stream: httpx.SyncByteStream, lease: Lease, holder: set[Lease]) -> None:
        self._stream = stream
        self._lease = lease
        self._holder = holder
        self._cancelled = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception:
            self._lease.report(False)
            raise
        except GeneratorExit:  # a reader that stops early is no failure of the server
            raise
        except BaseException:
            # KeyboardInterrupt mid-body: httpx closes the response next, and that close must not
            # count the interrupted read as a success.
            self._cancelled = True
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._holder.discard(self._lease)
            end_lease(self._lease, self._cancelled)

    def __del__(self) -> None:
        _abandon(self._lease, self._holder)


class _LeasedAsyncStream(httpx.AsyncByteStream):
    """The async twin of `_LeasedStream`."""

    def __init__(self, stream: httpx.AsyncByteStream, lease: Lease, holder: set[Lease]) -> None:
        self._stream = stream
        self._lease = lease
        self._holder = holder
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception:
            self._lease.report(False)
            raise
        except GeneratorExit:
            raise
        except BaseException:  # CancelledError: a timeout or a cancelled task, nothing about the server
            self._cancelled = True
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._holder.discard(self._lease)
            end_lease(self._lease, self._cancelled)

    def __del__(self) -> None:
        _abandon(self._lease, self._holder)


def _abandon(lease: Lease, holder: set[Lease]) -> None:
    """End the lease of a body collected unclosed: no outcome, and nothing that blocks (a finaliser)."""
    holder.discard(lease)
    lease.cancel()  # released already (the usual case): does nothing


class LoadBalancedTransport(httpx.BaseTransport):
    """An httpx transport that sends each request for the service to an instance ``lb`` picks.

    - ``transport``: the inner transport that does the HTTP (default ``httpx.HTTPTransport()``); closed
      with this one.
    - ``preserve_host``: send the logical ``Host`` header (e.g. ``api``) instead of the instance's
      address, for servers that route on it.
    - ``retry``: a `RetryPolicy`, True for a new default policy, False or None for no retries.
    - ``hosts``: the host names to balance (default: ``lb.service``); other hosts pass through.
    - ``key``: a function of the request giving its hash key for ``consistent_hash`` (e.g.
      ``lambda r: r.headers.get("x-user")``; None for no key), passed on to ``lb.acquire(key=...)``.

    A connection error, a timeout or a 5xx response counts as a failure of the instance. An empty pool
    raises `NoServerAvailableError` (an ``httpx.ConnectError``). The instance stays in flight until the
    response is closed (``client.get`` closes it; ``client.stream`` when its block ends), garbage
    collected unclosed, or this transport closed; the last two record no outcome. The balancer is the
    caller's: it is not closed here.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        transport: httpx.BaseTransport | None = None,
        preserve_host: bool = False,
        retry: RetryPolicy | bool | None = True,
        hosts: Collection[str] | None = None,
        key: RequestKey | None = None,
    ) -> None:
        self._core = _Balancing(lb, preserve_host, retry, hosts, key)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy in use, or None."""
        return self._core.policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to an instance (retrying on others as the policy allows)."""
        if not self._core.balances(request):
            return self._transport.handle_request(request)
        attempts = self._core.attempts(request)
        try:
            return attempts.run(functools.partial(self._send, request, attempts))
        except NoServerAvailable as exc:
            if isinstance(exc, httpx.ConnectError):  # already one (an inner zklb transport): keep it
                raise
            raise _no_server(exc, request) from exc

    def _send(
        self, request: httpx.Request, attempts: Attempts[httpx.Response], lease: Lease
    ) -> httpx.Response:
        sent = self._core.rewrite(request, lease.server, attempts.tls, attempts.time_left())
        response = self._transport.handle_request(sent)
        if self._core.settle(response, lease):
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _LeasedStream(response.stream, lease, self._core.leases)
        return response

    def close(self) -> None:
        """Close the inner transport, and end the lease of every response still open.

        ``client.close()`` calls this. A response left open (``client.send(..., stream=True)``) stops
        counting as in flight on its instance, with no outcome recorded; closing it later changes
        nothing more.
        """
        self._core.end_leases()
        self._transport.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)


class AsyncLoadBalancedTransport(httpx.AsyncBaseTransport):
    """The async twin of `LoadBalancedTransport`, for ``httpx.AsyncClient``; same arguments.

    ``lb.acquire()`` does no I/O, so picking never blocks the event loop.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        preserve_host: bool = False,
        retry: RetryPolicy | bool | None = True,
        hosts: Collection[str] | None = None,
        key: RequestKey | None = None,
    ) -> None:
        self._core = _Balancing(lb, preserve_host, retry, hosts, key)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy in use, or None."""
        return self._core.policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to an instance (retrying on others as the policy allows)."""
        if not self._core.balances(request):
            return await self._transport.handle_async_request(request)
        lb = self._core.lb
        if not lb.started:
            try:
                await lb.astart()  # a first request must not block the event loop while ZooKeeper answers
            except RegistryError as exc:  # as the sync transport says it: no server, a ConnectError
                reason = f"the balancer could not start: {exc}"
                raise _no_server(NoServerAvailable(lb.service, lb.root, reason), request) from exc
        attempts = self._core.attempts(request)
        try:
            return await attempts.arun(functools.partial(self._send, request, attempts))
        except NoServerAvailable as exc:
            if isinstance(exc, httpx.ConnectError):  # already one (an inner zklb transport): keep it
                raise
            raise _no_server(exc, request) from exc

    async def _send(
        self, request: httpx.Request, attempts: Attempts[httpx.Response], lease: Lease
    ) -> httpx.Response:
        sent = self._core.rewrite(request, lease.server, attempts.tls, attempts.time_left())
        response = await self._transport.handle_async_request(sent)
        if self._core.settle(response, lease):
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _LeasedAsyncStream(response.stream, lease, self._core.leases)
        return response

    async def aclose(self) -> None:
        """Close the inner transport, and end the lease of every response still open (see
        `LoadBalancedTransport.close`)."""
        self._core.end_leases()
        await self._transport.aclose()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)
