"""The requests adapter's cheap per-request steps do what the slower ones they replace did."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import requests

import zklb.requests
from zklb._requests_copy import copy_for, readdressed
from zklb._requests_proxies import _PROXY_VARIABLES, _environment_may_proxy
from zklb.balancer import LoadBalancer
from zklb.instance import ServiceInstance

if TYPE_CHECKING:
    from tests.transports.conftest import StartBackends

TIMEOUT = 10.0


@pytest.mark.parametrize(
    "url",
    [
        "http://api/",
        "http://api",
        "https://user:pw@api:8443/a%2Fb/%E2%82%AC?q=a+b&r=%25#frag",
        "http://api/x?",  # an empty query is kept, as it was written
        "http://API/x#",
    ],
)
def test_the_url_sent_keeps_everything_but_scheme_and_authority(url: str) -> None:
    parts = urlsplit(url)
    sent = readdressed(url, parts, "https", "10.0.0.1:8443")
    assert sent.startswith("https://10.0.0.1:8443")
    assert sent.removeprefix("https://10.0.0.1:8443") == url.split(parts.netloc, 1)[1]
    # a URL urlsplit cleaned up (leading space): joined from the parts, as before
    assert readdressed(f" {url}", parts, "http", "h") == parts._replace(scheme="http", netloc="h").geturl()


def test_the_copy_has_every_attribute_and_headers_of_its_own() -> None:
    session = requests.Session()
    session.cookies.set("c", "1")
    request = session.prepare_request(
        requests.Request("POST", "http://api/p", data=b"x", headers={"X-A": "1"}, hooks={"response": print})
    )
    sent = copy_for(request, "http://10.0.0.1/p")
    plain = request.copy()
    plain.url = "http://10.0.0.1/p"
    assert sorted(vars(sent)) == sorted(vars(plain))
    for name in ("method", "url", "body", "hooks", "_body_position"):
        assert getattr(sent, name) == getattr(plain, name), name
    assert dict(vars(sent)["_cookies"]) == dict(vars(plain)["_cookies"]) == {"c": "1"}
    assert list(sent.headers.items()) == list(plain.headers.items())
    sent.headers["Host"] = "10.0.0.1"
    sent.headers["X-A"] = "2"
    assert "Host" not in request.headers
    assert (request.url, request.headers["X-A"]) == ("http://api/p", "1")  # the original is untouched


def test_the_environment_check_agrees_with_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not _environment_may_proxy()
    for name in _PROXY_VARIABLES:
        monkeypatch.setenv(name, "")  # set but empty: no proxy, as urllib reads it
        assert not _environment_may_proxy()
        monkeypatch.setenv(name, "http://proxy:3128")
        assert _environment_may_proxy(), name
        monkeypatch.delenv(name)
    # os.environ replaced by a plain mapping: still read correctly
    monkeypatch.setattr(os, "environ", {"HTTPS_PROXY": "http://proxy:3128"})
    assert _environment_may_proxy()
    monkeypatch.setattr(os, "environ", {"NO_PROXY": "*"})
    assert not _environment_may_proxy()


def test_a_response_without_cookies_leaves_the_jar_empty(
    backends: StartBackends, make_lb: Callable[..., LoadBalancer]
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with requests.Session() as s:
        s.trust_env = False
        zklb.requests.mount(s, lb)
        assert len(s.get(f"http://{lb.service}/cookie", timeout=TIMEOUT).cookies) == 1
        response = s.get(f"http://{lb.service}/", timeout=TIMEOUT)
        assert isinstance(response.cookies, requests.cookies.RequestsCookieJar)
        assert len(response.cookies) == 0
        assert [c.domain for c in s.cookies] == [f"{lb.service}.local"]


@pytest.fixture
def cuts_the_body() -> Iterator[int]:
    """A server that announces 10 bytes of body, sends 3 and closes the connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed by the test's end without a request
            return
        with conn:
            conn.settimeout(TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                head += data
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting (the test failed early)
    except OSError:
        pass
    listener.close()
    thread.join(TIMEOUT)


def test_a_body_cut_short_counts_against_its_instance_and_is_retried(
    backends: StartBackends, cuts_the_body: int
) -> None:
    (server,) = backends(1)
    cut = f"http://127.0.0.1:{cuts_the_body}"
    # Round robin starts with the first instance in id order: the one that cuts the body.
    instances = [ServiceInstance.parse(cut, id="a-cuts"), ServiceInstance.parse(server.url, id="b-serves")]
    lb = LoadBalancer.static(instances, service="api")
    with requests.Session() as s:
        s.trust_env = False
        zklb.requests.mount(s, lb)
        response = s.get("http://api/", timeout=TIMEOUT)  # round robin: the cutting server first
    assert (response.status_code, response.json()["backend"]) == (200, server.name)
    stats = lb.stats()
    seen = {key: (st.requests, st.failures, st.in_flight) for key, st in stats.items()}
    assert seen == {"a-cuts": (1, 1, 0), "b-serves": (1, 0, 0)}
