"""The fast copy of a request addressed to an instance gives exactly what httpx's public API gives."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

import zklb.httpx as zklb_httpx
from zklb._httpx_rewrite import readdress, readdress_slowly
from zklb.instance import ServiceInstance


def _seen(request: httpx.Request) -> tuple[Any, ...]:
    url = request.url
    return (
        sorted(vars(request)),
        request.method,
        (str(url), url.scheme, url.raw_host, url.port, url.raw_path, url.netloc, url.userinfo, url.fragment),
        request.headers.raw,
        request.extensions,
        request.stream,
    )


def test_the_fast_copy_is_in_use() -> None:
    assert zklb_httpx._readdress is readdress  # else every request pays ~5 us more


def test_the_fast_copy_agrees_with_httpx_public_api() -> None:
    urls = ["http://api/", "https://api:8443/a%2Fb/%E2%82%AC?q=a+b&r=%25#frag", "http://user:pw@api/x?"]
    servers = [
        ServiceInstance("a", "10.1.2.3", 80),
        ServiceInstance("b", "2001:db8::1", 443, scheme="https"),
        ServiceInstance("c", "svc-1.example.org", 9000, scheme="https"),
        ServiceInstance("d", "10.1.2.4", 80, ssl_port=443),
        ServiceInstance("e", "::1", 8080, ssl_port=8443),
    ]
    headers: list[list[tuple[str, str]]] = [
        [],  # no Host at all: appended
        [("X-A", "1"), ("Host", "api"), ("X-B", "2")],  # not first
        [("Host", "a"), ("X", "1"), ("host", "b"), ("HOST", "c")],  # duplicates: the first one kept
        [("Host", "api"), ("Accept", "*/*"), ("X-Multi", "1"), ("X-Multi", "2")],
    ]
    extensions: list[dict[str, Any]] = [{}, {"timeout": {"connect": 1.0}, "trace": print}]
    bodies: list[dict[str, Any]] = [{}, {"content": b"body"}, {"stream": httpx.ByteStream(b"x")}]
    checked = 0
    for url, server, header, extension, body, preserve in itertools.product(
        urls, servers, headers, extensions, bodies, (False, True)
    ):
        request = httpx.Request("PUT", url, headers=header, **body)
        if not body.get("stream") and not header:  # as built by hand with a stream: no Host at all
            request.headers = httpx.Headers(header)
        for tls in (False, True) if server.tls else (False,):
            fast = readdress(request, server, tls, preserve, extension)
            slow = readdress_slowly(request, server, tls, preserve, extension)
            assert _seen(fast) == _seen(slow), (url, server, header, tls, preserve)
            assert fast.extensions is not extension  # a copy, as httpx makes it
            assert fast.headers._list is not request.headers._list  # the original stays as built
            checked += 1
    assert checked > 500


def test_the_original_request_is_left_as_the_client_built_it() -> None:
    request = httpx.Request("GET", "http://api/p?q=1", headers={"X-A": "1"})
    before = (str(request.url), request.headers.raw)
    sent = readdress(request, ServiceInstance("a", "10.0.0.1", 8080), False, False, request.extensions)
    sent.headers["X-B"] = "2"
    assert (str(sent.url), sent.headers["Host"]) == ("http://10.0.0.1:8080/p?q=1", "10.0.0.1:8080")
    assert (str(request.url), request.headers.raw) == before
