"""The decoding shortcuts a start of 10,000 instances takes give exactly what the general paths give."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from zklb.codecs.curator import _HTTP_URI_SPEC, _TLS_URI_SPEC, _endpoint, _uri_endpoint, resolve_uri_spec
from zklb.errors import InvalidInstance
from zklb.instance import check_host

addresses = st.one_of(
    st.sampled_from(
        ["10.0.0.1", "Host.Example", "a-b.c", "::1", "[::1]", "h@x", "a/b", "a:1", "", "..", "-"]
    ),
    st.text(alphabet="aZ09.-:[]@/%", max_size=12),
)
ports = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70_000), st.sampled_from(["80", "x", 80.0]), st.just(65535)
)


@given(
    address=st.one_of(st.none(), addresses),
    port=ports,
    ssl_port=ports,
    spec=st.sampled_from(
        [_HTTP_URI_SPEC, _TLS_URI_SPEC, None, {"parts": [{"value": "address", "variable": True}]}]
    ),
)
def test_the_endpoint_shortcut_is_the_resolved_uri_parsed(
    address: str | None, port: object, ssl_port: object, spec: object
) -> None:
    doc: dict[str, Any] = {"address": address, "port": port, "sslPort": ssl_port, "uriSpec": spec}
    assert _endpoint(doc) == _uri_endpoint(resolve_uri_spec(doc))


def slow_check_host(host: str) -> str | None:
    """check_host's IPv4 branch without the shortcut: what ipaddress makes of it, or None if invalid."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return None


@given(st.text(alphabet="0123456789.", min_size=1, max_size=17))
@example("0.0.0.0")
@example("255.255.255.255")
@example("01.2.3.4")
@example("256.1.1.1")
def test_the_ipv4_shortcut_agrees_with_ipaddress(host: str) -> None:
    expected = slow_check_host(host)
    try:
        got: str | None = check_host(host)
    except InvalidInstance:
        got = None
    assert got == expected
