"""An ``https://`` request is only ever sent over TLS: to an instance's TLS port, never in plain text.

Real servers on 127.0.0.1 (one speaking TLS with a self-signed certificate made here with ``openssl``,
plain ones beside it), real httpx (sync and async) and requests, balancers fed by ZooKeeper.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import zklb.requests
from zklb import LoadBalancer, NoServerAvailable, Registry, ServiceInstance
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.httpx import NoServerAvailableError as HttpxNoServer
from zklb.requests import NoServerAvailableError as RequestsNoServer

WAIT = 15.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        server.record(self.path, self.headers.get("Authorization"))
        body = server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def record(self, path: str, authorization: str | None) -> None:
        with self._lock:
            self.seen.append((path, authorization))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (key and certificate in one PEM file)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate; on Debian: apt-get install -y openssl")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    both = directory / "both.pem"
    both.write_text(key.read_text() + cert.read_text())
    return both


@pytest.fixture
def servers(certificate: Path) -> Iterator[dict[str, _Server]]:
    """``plain`` (http only), ``dual`` (the plain port of an instance that also has ``tls``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate)
    started = {"plain": _Server("plain", None), "dual": _Server("dual", None), "tls": _Server("tls", context)}
    yield started
    for server in started.values():
        server.stop()


def _client_context(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


def _mixed(servers: dict[str, _Server]) -> list[ServiceInstance]:
    return [
        ServiceInstance.parse(f"http://127.0.0.1:{servers['plain'].port}", id="plain"),
        ServiceInstance.parse(
            f"http://127.0.0.1:{servers['dual'].port}", id="dual", ssl_port=servers["tls"].port
        ),
    ]


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections"])
def test_https_requests_reach_only_the_tls_port_and_http_ones_the_plain_ports(
    servers: dict[str, _Server], certificate: Path, strategy: str
) -> None:
    lb = LoadBalancer.static(_mixed(servers), service="api", strategy=strategy)
    inner = httpx.HTTPTransport(verify=_client_context(certificate))
    with httpx.Client(transport=LoadBalancedTransport(lb, transport=inner)) as client:
        for i in range(10):
            assert client.get(f"https://api/s/{i}").text == "tls"
        plain = {client.get(f"http://api/p/{i}").text for i in range(10)}
    assert plain == {"plain", "dual"}
    assert [path for path, _ in servers["tls"].seen] == [f"/s/{i}" for i in range(10)]
    assert all(path.startswith("/p/") for path, _ in servers["plain"].seen + servers["dual"].seen)
    assert sum(s.in_flight for s in lb.stats().values()) == 0  # both pickers' counts came back to zero


def test_async_https_requests_reach_only_the_tls_port(servers: dict[str, _Server], certificate: Path) -> None:
    lb = LoadBalancer.static(_mixed(servers), service="api")

    async def main() -> list[str]:
        inner = httpx.AsyncHTTPTransport(verify=_client_context(certificate))
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb, transport=inner)) as client:
            return [(await client.get(f"https://api/a/{i}")).text for i in range(6)]

    assert asyncio.run(main()) == ["tls"] * 6
    assert servers["plain"].seen == servers["dual"].seen == []


def test_requests_https_reaches_only_the_tls_port(servers: dict[str, _Server], certificate: Path) -> None:
    lb = LoadBalancer.static(_mixed(servers), service="api")
    with requests.Session() as session:
        zklb.requests.mount(session, lb)
        texts = {session.get(f"https://api/r/{i}", verify=str(certificate)).text for i in range(6)}
        plain = {session.get(f"http://api/r/{i}").text for i in range(6)}
    assert (texts, plain) == ({"tls"}, {"plain", "dual"})
    assert len(servers["tls"].seen) == 6


def test_with_no_tls_instance_nothing_is_sent_and_the_error_says_why(
    servers: dict[str, _Server], certificate: Path
) -> None:
    plain_only = [ServiceInstance.parse(f"http://127.0.0.1:{servers['plain'].port}", id="plain")]
    lb = LoadBalancer.static(plain_only, service="api")
    secret = "https://user:secret@api/account"
    with (
        httpx.Client(transport=LoadBalancedTransport(lb)) as client,
        pytest.raises(HttpxNoServer, match="offers TLS") as info,
    ):
        client.get(secret)
    assert isinstance(info.value, httpx.ConnectError) and "never sent in plain text" in info.value.reason

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb)) as client:
            await client.get(secret)

    with pytest.raises(HttpxNoServer, match="offers TLS"):
        asyncio.run(main())
    with requests.Session() as session:
        zklb.requests.mount(session, lb)
        with pytest.raises(RequestsNoServer, match="offers TLS"):
            session.get(secret, verify=str(certificate))
    with pytest.raises(NoServerAvailable, match="offers TLS"):
        lb.acquire(tls=True)
    assert servers["plain"].seen == []  # nothing was sent, credentials or otherwise
    with httpx.Client(transport=LoadBalancedTransport(lb)) as client:
        assert client.get("http://api/ok").text == "plain"  # plain http is still served


def test_retries_of_an_https_request_stay_on_tls_instances(
    servers: dict[str, _Server], certificate: Path
) -> None:
    # A second TLS instance that refuses connections: the retry goes to the other TLS one, never to plain.
    dead = ServiceInstance.parse("http://127.0.0.1:1", id="dead", ssl_port=1)
    lb = LoadBalancer.static([*_mixed(servers), dead], service="api")
    inner = httpx.HTTPTransport(verify=_client_context(certificate))
    with httpx.Client(transport=LoadBalancedTransport(lb, transport=inner)) as client:
        assert {client.get(f"https://api/t/{i}").text for i in range(8)} == {"tls"}
    assert servers["plain"].seen == servers["dual"].seen == []


def test_a_registration_with_both_ports_serves_http_and_https_callers(
    servers: dict[str, _Server], certificate: Path, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry, LoadBalancer(zk_hosts, service) as lb:
        registry.register(service, f"http://127.0.0.1:{servers['dual'].port}", ssl_port=servers["tls"].port)
        assert lb.wait_for(lambda m: len(m) == 1, WAIT), lb.membership
        inner = httpx.HTTPTransport(verify=_client_context(certificate))
        with httpx.Client(transport=LoadBalancedTransport(lb, transport=inner, hosts=["api"])) as client:
            assert client.get("https://api/x").text == "tls"
            assert client.get("http://api/x").text == "dual"
        added = lb.add_server(f"http://127.0.0.1:{servers['plain'].port}", ssl_port=servers["tls"].port)
        assert added.instance.tls_url == f"https://127.0.0.1:{servers['tls'].port}"
        assert lb.membership.by_id[added.instance.id].ssl_port == servers["tls"].port
