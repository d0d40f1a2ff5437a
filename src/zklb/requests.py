"""A requests transport adapter that sends each request to a server picked by a `LoadBalancer`.

::

    import requests
    import zklb.requests

    session = requests.Session()
    zklb.requests.mount(session, lb)   # "api" is lb.service; other hosts are sent as before
    session.get("http://api/users/1")

The adapter sends a copy of the prepared request with the scheme, host and port of the instance (for a
request written ``https://``, its TLS port: such a request is never sent to a plain-http instance, and
with no TLS instance `NoServerAvailableError` says so and nothing is sent), and
hands back the response as the answer to the logical request (``response.url`` and ``response.request``
are the logical ones), so a relative redirect resolves against ``http://api/...`` and comes back through
the balancer, while an absolute redirect to another host goes to whatever adapter that host has.

The instance counts the request as in flight until the body has been read to its end or the response
is closed (``stream=True`` included): the adapter hooks the urllib3 response, because that is the only
object that sees both events. A response dropped unclosed, or still open when the adapter (or its
session) closes, ends its lease then, with no outcome recorded.
"""

from __future__ import annotations

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:
    raise ImportError(
        "zklb.requests needs requests, which is not installed: pip install zklb[requests]", name="requests"
    ) from exc

import functools
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeAlias
from urllib.parse import SplitResult, urlsplit

from requests.adapters import BaseAdapter
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar
from requests.utils import select_proxy
from urllib3.exceptions import NewConnectionError
from urllib3.response import HTTPResponse
from urllib3.util import Timeout

from zklb._attempts import Attempts, ClientHooks
from zklb._requests_copy import authority_of, copy_for, readdressed
from zklb._requests_lease import ResponseLease
from zklb._requests_proxies import proxies_for
from zklb.balancer import Lease, LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.retry import RetryPolicy, is_failure_status, resolve_policy
from zklb.strategies import HashKey

__all__ = ["LoadBalancedAdapter", "NoServerAvailableError", "RequestKey", "mount"]

#: A request's hash key for ``consistent_hash``, from the prepared request (None: no key for this one).
RequestKey: TypeAlias = Callable[[requests.PreparedRequest], HashKey | None]

_Timeout = float | tuple[float, float] | tuple[float, None] | None
_Cert = bytes | str | tuple[bytes | str, bytes | str] | None


def _status(response: requests.Response) -> int:
    return response.status_code


def _close(response: requests.Response) -> None:
    response.close()


def _unsent(error: BaseException) -> bool:
    # requests wraps urllib3's MaxRetryError, whose reason says whether a connection was ever made.
    if isinstance(error, requests.ConnectTimeout):
        return True
    cause = error.args[0] if isinstance(error, requests.ConnectionError) and error.args else None
    return isinstance(getattr(cause, "reason", None), NewConnectionError)


_HOOKS: ClientHooks[requests.Response] = ClientHooks(
    # Refused, dropped (before or, see _send, during the body) or timed out: another server may answer.
    retryable_errors=(requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError),
    status=_status,
    close=_close,
    unsent=_unsent,
)


class NoServerAvailableError(NoServerAvailable, requests.ConnectionError):
    """No instance to send a request to: both a `zklb.NoServerAvailable` and a ``requests.ConnectionError``.

    What the adapter raises for an empty pool (or a pool whose every instance is excluded), so that code
    written for plain requests, which handles ``requests.ConnectionError`` or
    ``requests.RequestException``, handles it too; ``request`` is the prepared request, as on requests'
    own errors.
    """

    def __init__(
        self,
        service: str,
        root: str = "/services",
        reason: str = "no instances registered",
        *,
        request: requests.PreparedRequest | None = None,
    ) -> None:
        NoServerAvailable.__init__(self, service, root, reason)
        requests.ConnectionError.__init__(self, str(self), request=request)


def _cut_timeout(timeout: _Timeout | Timeout, time_left: float) -> Timeout:
    """The caller's timeout for one attempt, cut so that the attempt ends by the policy's deadline.

    urllib3's ``total`` bounds connecting and reading the response head together (each socket read of
    the body stays bounded by the read timeout, as requests' own timeouts are).
    """
    if isinstance(timeout, Timeout):
        cut = timeout.clone()
        total = timeout.total
        cut.total = min(total, time_left) if isinstance(total, int | float) else time_left
        return cut
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return Timeout(connect=connect, read=read, total=time_left)


def _replayable(body: object) -> bool:
    # Bytes can be sent again; a generator or a file object may already be (partly) consumed.
    return body is None or isinstance(body, bytes | str)


def _sets_cookies(response: requests.Response) -> bool:
    raw = response.raw
    if isinstance(raw, HTTPResponse):  # its headers answer "in" without raising (requests' own raise)
        headers = raw.headers
        return "set-cookie" in headers or "set-cookie2" in headers
    return True  # not a urllib3 response (a test double): extract as requests would


class _Route:
    """One balancer as an adapter uses it: its retry policy and which ``Host`` header to send."""

    __slots__ = ("key", "lb", "policy", "preserve_host")

    def __init__(
        self, lb: LoadBalancer, policy: RetryPolicy | None, preserve_host: bool, key: RequestKey | None
    ) -> None:
        self.lb = lb
        self.policy = policy
        self.preserve_host = preserve_host
        self.key = key


class LoadBalancedAdapter(HTTPAdapter):
    """A requests adapter that sends each request for the service to an instance ``lb`` picks.

    Best installed with `mount` (``zklb.requests.mount(session, lb)``), which balances every URL for
    the service, credentials or port included, and knows the session's proxy settings. Mounted by
    hand, on the logical base URL (``session.mount("http://api/", LoadBalancedAdapter(lb))``), it only
    sees URLs that start with exactly that prefix.

    - ``preserve_host``: send the logical ``Host`` header (e.g. ``api``) instead of the instance's
      address, for servers that route on it.
    - ``retry``: a `RetryPolicy`, True for a new default policy, False or None for no retries.
    - ``hosts``: the host names to balance (default: ``lb.service``); requests to other hosts are sent
      as a plain `HTTPAdapter` would, which matters only when it is mounted more widely.
    - ``key``: a function of the request giving its hash key for ``consistent_hash`` (e.g.
      ``lambda r: r.headers.get("x-user")``; None for no key), passed on to ``lb.acquire(key=...)``.
    - other keyword arguments (``pool_connections``, ``pool_maxsize``, ``max_retries``, ``pool_block``)
      go to `HTTPAdapter`; ``max_retries`` are urllib3's retries on the same instance.

    Proxies are chosen for the instance's URL, as requests would choose them for a request to it
    (``NO_PROXY`` included); see docs/requests.md for the one case only `mount` gets right.

    A connection error, a timeout or a 5xx response counts as a failure of the instance. An empty pool
    raises `NoServerAvailableError` (a ``requests.ConnectionError``).
    """

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        preserve_host: bool = False,
        retry: RetryPolicy | bool | None = True,
        hosts: Collection[str] | None = None,
        key: RequestKey | None = None,
        **kwargs: Any,
    ) -> None:
        self._route = _Route(lb, resolve_policy(retry), preserve_host, key)
        names = hosts if hosts is not None else (lb.service,)
        self._routes: dict[str, _Route] = {name.lower(): self._route for name in names}
        # Set by mount(): the adapters the session had for other hosts, by scheme, and the session.
        self._others: dict[str, BaseAdapter] = {}
        self._session: weakref.ref[requests.Session] | None = None
        # Leases of responses not yet read to the end or closed, ended by close(). A set: its add,
        # discard and pop are atomic, so the finalisers of dropped responses can use it without a lock.
        self._leases: set[Lease] = set()
        super().__init__(**kwargs)

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy in use (for ``lb``, the first balancer, when `mount` gave several), or None."""
        return self._route.policy

    def send(  # noqa: PLR0917 - HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: _Timeout = None,
        verify: bool | str = True,
        cert: _Cert = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` to an instance (retrying on others as the policy allows).

        Every argument is passed on to `HTTPAdapter.send` for each attempt (``proxies`` as requests
        would have chosen them for the instance's URL). A request for another host is sent exactly as
        without this adapter.
        """
        options: dict[str, Any] = {
            "stream": stream,
            "timeout": timeout,
            "verify": verify,
            "cert": cert,
            "proxies": proxies,
        }
        url = urlsplit(request.url or "")
        route = self._routes.get(url.hostname or "")  # hostname: lower case, without userinfo or port
        if route is None:
            other = self._others.get(url.scheme)
            if other is None:
                return super().send(request, **options)
            return other.send(request, **options)
        attempts = Attempts(
            route.lb,
            route.policy,
            _HOOKS,
            method=request.method or "GET",
            replayable=_replayable(request.body),
            key=None if route.key is None else route.key(request),
            tls=url.scheme == "https",  # written https://: only ever sent over TLS, to a TLS port
        )
        try:
            return attempts.run(functools.partial(self._send, request, url, route, options, attempts))
        except NoServerAvailable as exc:
            if isinstance(exc, requests.ConnectionError):  # already one (a nested adapter): keep it
                raise
            raise NoServerAvailableError(exc.service, exc.root, exc.reason, request=request) from exc

    def _send(  # noqa: PLR0917 - bound with functools.partial, once per request
        self,
        request: requests.PreparedRequest,
        url: SplitResult,
        route: _Route,
        options: dict[str, Any],
        attempts: Attempts[requests.Response],
        lease: Lease,
    ) -> requests.Response:
        server = lease.server
        scheme, port = server.endpoint(url.scheme == "https")
        authority = authority_of(scheme, server, port)
        target = readdressed(request.url or "", url, scheme, authority)
        # A copy: the session keeps the original for redirects, cookies and the response.
        sent = copy_for(request, target)
        sent.headers["Host"] = url.netloc.rpartition("@")[2] if route.preserve_host else authority
        given = options["proxies"]
        session = None if self._session is None else self._session()
        proxies = proxies_for(session, request.url or "", target, given)
        time_left = attempts.time_left()
        if proxies is not given or time_left is not None:
            options = {**options, "proxies": proxies}
            if time_left is not None:
                options["timeout"] = _cut_timeout(options["timeout"], time_left)
            if proxies is not given and select_proxy(target, proxies) is None:
                # Added by requests for the proxy of the logical URL (on a redirect); the instance is
                # reached directly and must not get the proxy's credentials.
                sent.headers.pop("Proxy-Authorization", None)
        response = super().send(sent, **options)
        # Present the response as the answer to the logical request, as the session expects.
        response.request = request
        response.url = request.url or ""
        if _sets_cookies(response):  # else the jar build_response filled is empty, as it should be
            response.cookies = RequestsCookieJar()
            extract_cookies_to_jar(response.cookies, request, response.raw)  # type: ignore[no-untyped-call]
        if is_failure_status(response.status_code):
            lease.report(False)
        raw = response.raw
        if options["stream"] and isinstance(raw, HTTPResponse):
            # The body is read later, by the caller, or never: the lease follows it (ResponseLease).
            ResponseLease.attach(raw, lease, self._leases)
            return response
        if not options["stream"]:
            # The session would read the body right after this anyway; reading it inside the attempt
            # makes a connection cut mid-body count against this instance (Attempts releases the
            # lease as a failure), and be retried like any other.
            response.content  # noqa: B018 - reading is the point
        lease.release()  # the body is in, or not a urllib3 response (a test double): nothing to wait for
        return response

    def _add(
        self, lb: LoadBalancer, preserve_host: bool, retry: RetryPolicy | bool | None, key: RequestKey | None
    ) -> None:
        name = lb.service.lower()
        if name in self._routes:
            raise ValueError(f"two balancers for service {lb.service!r}: which one is meant is unclear")
        self._routes[name] = _Route(lb, resolve_policy(retry), preserve_host, key)

    def close(self) -> None:
        """Close the connection pools, and the adapters `mount` took over for other hosts.

        A response still open (``stream=True``, not read to its end nor closed) stops counting as in
        flight on its instance, with no outcome recorded; it can still be read, or closed, as with
        plain requests, and that changes nothing more.
        """
        leases = self._leases
        while leases:
            try:
                lease = leases.pop()
            except KeyError:  # emptied meanwhile, by responses closing in other threads
                break
            lease.cancel()
        super().close()
        for other in self._others.values():
            other.close()

    def __repr__(self) -> str:
        services = sorted({route.lb.service for route in self._routes.values()})
        retry = "off" if self._route.policy is None else repr(self._route.policy)
        return f"<LoadBalancedAdapter {','.join(services)} hosts={sorted(self._routes)} retry={retry}>"


def mount(
    session: requests.Session,
    *balancers: LoadBalancer,
    preserve_host: bool = False,
    retry: RetryPolicy | bool | None = True,
    key: RequestKey | None = None,
    **kwargs: Any,
) -> LoadBalancedAdapter:
    """Balance every request ``session`` makes to one of the ``balancers``' services; the recommended setup.

    ::

        zklb.requests.mount(session, users_lb, orders_lb)
        session.get("http://users/1")                  # to an instance of "users"
        session.get("http://user:pw@orders:8080/x")    # to an instance of "orders", with the credentials
        session.get("https://example.org/")            # as without zklb

    One `LoadBalancedAdapter` is mounted on ``http://`` and ``https://``. A request whose host is a
    balancer's service goes to one of its instances, whatever the URL's userinfo or port (requests
    matches mount prefixes on the whole URL, so an adapter mounted by hand on ``http://api/`` never
    sees ``http://user:pw@api/``, and the credentials go wherever DNS says ``api`` is). Every other
    request is sent by the adapter the session had for its scheme, exactly as before; the adapter
    closes those with itself. Adapters mounted on longer prefixes (``http://other/``) still take
    precedence, as requests orders them.

    ``preserve_host`` and ``key`` are `LoadBalancedAdapter`'s (for every balancer), ``kwargs``
    `HTTPAdapter`'s (``pool_maxsize``, ...). ``retry``: True gives each balancer a new default policy
    (and its own budget); a `RetryPolicy` is shared by all. Returns the adapter.
    """
    if not balancers:
        raise ValueError("mount() needs at least one balancer")
    if "hosts" in kwargs:  # it would apply to the first balancer only
        raise TypeError("mount() balances each balancer's service; for other names, mount adapters by hand")
    first, *others = balancers
    adapter = LoadBalancedAdapter(first, preserve_host=preserve_host, retry=retry, key=key, **kwargs)
    for lb in others:
        adapter._add(lb, preserve_host, retry, key)
    for scheme in ("http", "https"):
        prefix = f"{scheme}://"
        try:
            # What the session would use for a URL of this scheme that no longer prefix matches.
            adapter._others[scheme] = session.get_adapter(prefix)
        except requests.exceptions.InvalidSchema:
            pass  # none: the adapter sends such requests itself
        session.mount(prefix, adapter)
    # Weak: the session holds the adapter; the adapter only needs to read its proxy settings.
    adapter._session = weakref.ref(session)
    return adapter
