"""Addressing an httpx request to an instance, at a fraction of what httpx's own copies cost.

Private to `zklb.httpx`. Each balanced request is sent as a copy addressed to the picked instance: its
scheme, host and port replaced, its ``Host`` header naming the instance (unless the logical one is
kept), its method, path, query, body and extensions unchanged. Built with httpx's public API that copy
costs ~6 us (``URL.copy_with`` parses and validates the whole URL again, ``Request()`` and
``Headers.__setitem__`` copy and scan), more than everything else the transport does per request. None
of that validation is needed: the path and query come from a valid URL, and the instance's parts were
checked when it was built. So `readdress` fills httpx's records directly, a private detail of httpx:
it is used only if, on the httpx installed, it gives exactly what the public API gives for a set of
samples (checked once, at import); otherwise `readdress_slowly` is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import httpx

from zklb.instance import DEFAULT_PORTS, ServiceInstance

__all__ = ["Readdress", "readdress", "readdress_slowly", "select"]

#: ``(request, server, tls, preserve_host, extensions) -> the copy to send``.
Readdress: TypeAlias = Callable[
    [httpx.Request, ServiceInstance, bool, bool, Mapping[str, Any]], httpx.Request
]

_new = object.__new__
_tuple_new = tuple.__new__


def readdress_slowly(
    request: httpx.Request,
    server: ServiceInstance,
    tls: bool,
    preserve_host: bool,
    extensions: Mapping[str, Any],
) -> httpx.Request:
    """``request`` addressed to ``server`` (its TLS port if ``tls``), with httpx's public API only."""
    scheme, port = server.endpoint(tls)
    url = request.url.copy_with(scheme=scheme, host=server.host, port=port)
    sent = httpx.Request(
        request.method, url, headers=request.headers, stream=request.stream, extensions=extensions
    )
    if not preserve_host:
        sent.headers["Host"] = url.netloc.decode("ascii")
    return sent


def readdress(
    request: httpx.Request,
    server: ServiceInstance,
    tls: bool,
    preserve_host: bool,
    extensions: Mapping[str, Any],
) -> httpx.Request:
    """What `readdress_slowly` gives, built field by field (see the module's docstring)."""
    scheme, port = server.endpoint(tls)
    host = server.host
    explicit: int | None = None if DEFAULT_PORTS[scheme] == port else port  # as httpx normalises
    logical = request.url
    ref = logical._uri_reference
    url = _new(httpx.URL)
    url._uri_reference = _tuple_new(
        type(ref), (scheme, ref.userinfo, host, explicit, ref.path, ref.query, ref.fragment)
    )
    given = request.headers
    headers = _new(httpx.Headers)
    headers._encoding = None  # as Headers(given) leaves it
    if preserve_host:
        headers._list = list(given._list)
    else:
        bracketed = f"[{host}]" if ":" in host else host
        netloc = bracketed if explicit is None else f"{bracketed}:{explicit}"
        headers._list = _with_host(given._list, netloc.encode("ascii"))
    sent = _new(httpx.Request)
    sent.method = request.method
    sent.url = url
    sent.headers = headers
    sent.extensions = dict(extensions)
    sent.stream = request.stream
    return sent


def _with_host(entries: list[tuple[bytes, bytes, bytes]], value: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """``entries`` with one ``Host`` entry of ``value``, as ``Headers.__setitem__`` leaves them: in place
    of the first, later ones dropped, appended if there was none."""
    host = (b"Host", b"host", value)
    if entries and entries[0][1] == b"host":  # where httpx puts it: the rest is usually kept as is
        rest = entries[1:]
        for entry in rest:
            if entry[1] == b"host":
                break
        else:
            rest.insert(0, host)
            return rest
    kept = [entry for entry in entries if entry[1] != b"host"]
    if len(kept) == len(entries):
        kept.append(host)
    else:  # entries before the first Host are all kept: it goes back at its own index
        kept.insert(next(i for i, entry in enumerate(entries) if entry[1] == b"host"), host)
    return kept


def _samples() -> list[tuple[httpx.Request, ServiceInstance, bool, bool, dict[str, Any]]]:
    plain = ServiceInstance("s1", "10.0.0.1", 8080)
    v6_https = ServiceInstance("s2", "::1", 443, scheme="https")
    named = ServiceInstance("s3", "host.example", 80)
    both = ServiceInstance("s4", "10.0.0.4", 80, ssl_port=8443)
    duplicated = httpx.Request("GET", "http://api/", headers=[("Host", "a"), ("X", "1"), ("host", "b")])
    hostless = httpx.Request("GET", "http://api/", stream=httpx.ByteStream(b""), headers={"X": "1"})
    return [
        (httpx.Request("GET", "http://api/a/b?x=1&y=%20#f", headers={"X-A": "1"}), plain, False, False, {}),
        (httpx.Request("POST", "http://u:p@api:81/", content=b"body"), v6_https, False, False, {"a": 1}),
        (httpx.Request("GET", "https://api/%E2%82%AC"), named, False, True, {}),
        (httpx.Request("PUT", "https://api/x?", json={"k": 1}), both, True, False, {"timeout": {}}),
        (duplicated, plain, False, False, {}),
        (hostless, both, False, False, {}),
    ]


def _same(fast: httpx.Request, slow: httpx.Request) -> bool:
    fields = (
        lambda r: sorted(vars(r)),  # no attribute httpx's constructor sets is missed
        lambda r: (r.method, r.url, str(r.url), r.url.port, r.url.raw_host, r.url.raw_path, r.url.netloc),
        lambda r: (r.headers.raw, r.headers.encoding, r.extensions, r.stream),
    )
    return all(field(fast) == field(slow) for field in fields)


def select() -> Readdress:
    """`readdress` if it agrees with `readdress_slowly` on this httpx, else `readdress_slowly`."""
    try:
        for sample in _samples():
            if not _same(readdress(*sample), readdress_slowly(*sample)):
                return readdress_slowly
    except Exception:  # httpx's internals changed shape
        return readdress_slowly
    return readdress
