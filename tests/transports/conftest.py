"""Fixtures for the transport tests: real HTTP backends on 127.0.0.1, registered in the real ZooKeeper of
``tests/conftest.py`` through a real `LoadBalancer`.

Routes every backend answers (any method):

- ``/stream``: headers and a first chunk at once, the rest only when ``backend.release`` is set.
- ``/slow?seconds=S``: answers after S seconds.
- ``/stall``: answers only when ``backend.release`` is set (or after 10 s): a server that hangs.
- ``/status/<code>``: answers with that status.
- ``/redirect/relative``: 302 to ``/target``; ``/redirect/absolute?to=URL``: 302 to URL.
- ``/cookie``: sets a cookie.
- anything else: ``backend.status`` (200 unless a test changes it) and a JSON echo of the request.

The ``proxy`` fixture is a forwarding HTTP proxy on 127.0.0.1 that records every request passing through
it (``Proxy.seen``); it answers 502 for a host it cannot reach.

`Backend` and `Proxy` are `zklb.testing.HTTPBackend` servers with these routes: ``Backend.kill()`` stops
one the hard way (the listening socket is closed, so new connections are refused, and open connections
are shut down) and returns once every server thread has ended.

Test modules import the names below for annotations only (``if TYPE_CHECKING:``), as
``tests.transports.conftest``; at run time they reach everything through the fixtures. The fault suite
(``tests/faults/conftest.py``) imports `Backend` and the ``backends`` fixture from here at run time.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from zklb.balancer import LoadBalancer
from zklb.testing import HTTPBackend, HTTPBackendHandler


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as a backend saw it."""

    method: str
    path: str
    host: str | None
    body: bytes


class _Handler(HTTPBackendHandler):
    """The routes listed at the top of this module (HTTP/1.1 keep-alive; /stream flushes itself)."""

    @property
    def backend(self) -> Backend:
        backend = super().backend
        assert isinstance(backend, Backend)
        return backend

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_GET  # noqa: N815 - http.server's names

    def _handle(self) -> None:
        backend = self.backend
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        backend.record(Hit(self.command, self.path, self.headers.get("Host"), body))
        path, _, query = self.path.partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if path == "/stream":
            self._stream(backend)
        elif path == "/stall":
            backend.release.wait(10)  # set by kill(): a stalled request never holds up the teardown
            self._reply(200, b"stalled")
        elif path == "/slow":
            time.sleep(float(params.get("seconds", "1")))
            self._reply(200, b"slow")
        elif path.startswith("/status/"):
            self._reply(int(path.removeprefix("/status/")), b"status")
        elif path == "/redirect/relative":
            self._reply(302, b"", location="/target")
        elif path == "/redirect/absolute":
            self._reply(302, b"", location=params["to"])
        else:
            echo = {
                "backend": backend.name,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
                "headers": dict(self.headers.items()),
                "body": body.decode("utf-8", "replace"),
            }
            cookie = "visited=yes; Path=/" if path == "/cookie" else None
            self._reply(backend.status, json.dumps(echo).encode(), cookie=cookie)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().strip(), 16)
            chunk = self.rfile.read(size)
            self.rfile.readline()
            if not size:
                return b"".join(chunks)
            chunks.append(chunk)

    def _reply(
        self, status: int, body: bytes, *, location: str | None = None, cookie: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.backend.name)
        if location is not None:
            self.send_header("Location", location)
        if cookie is not None:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, backend: Backend) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(backend.STREAM_HEAD) + len(backend.STREAM_TAIL)))
        self.send_header("X-Backend", backend.name)
        self.end_headers()
        self.wfile.write(backend.STREAM_HEAD)
        self.wfile.flush()
        backend.release.wait(10)
        self.wfile.write(backend.STREAM_TAIL)


class Backend(HTTPBackend):
    """One HTTP server on 127.0.0.1 with a free port (or ``port``, to bring a killed one back at its
    address), serving the routes above from its own threads until killed."""

    STREAM_HEAD = b"first-chunk;"  # what /stream sends at once
    STREAM_TAIL = b"second-chunk"  # and after ``release`` is set

    def __init__(self, name: str, port: int = 0) -> None:
        self.status = 200
        self.release = threading.Event()  # lets /stream responses finish
        self.instance_id = ""  # set when registered
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        super().__init__(_Handler, port=port, name=name)
        self.start()

    def record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    @property
    def hits(self) -> list[Hit]:
        """Requests received so far."""
        with self._lock:
            return list(self._hits)

    @property
    def count(self) -> int:
        """Number of requests received so far."""
        with self._lock:
            return len(self._hits)

    def on_kill(self) -> None:
        self.release.set()  # a stalled or streaming request never holds up the kill


class Backends(list[Backend]):
    """Backends started together, in order."""

    def counts(self) -> list[int]:
        """Requests received by each backend, in order."""
        return [b.count for b in self]


@dataclass(frozen=True, slots=True)
class Proxied:
    """One request as the proxy saw it: ``target`` is the absolute URL it was asked to fetch."""

    method: str
    target: str
    headers: dict[str, str]


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer"}


class _ProxyHandler(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        proxy = self.backend
        assert isinstance(proxy, Proxy)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        proxy.record(Proxied(self.command, self.path, dict(self.headers.items())))
        target = urlsplit(self.path)  # absolute-form, as clients address a forward proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=10)
            try:
                upstream.request(
                    self.command,
                    target.path + (f"?{target.query}" if target.query else ""),
                    body=body or None,
                    headers=headers,
                )
                answer = upstream.getresponse()
                status, reply_headers, reply = answer.status, answer.getheaders(), answer.read()
            finally:
                upstream.close()
        except OSError as exc:  # e.g. a logical name like "svc-..." that no DNS knows
            status, reply_headers, reply = 502, [], f"proxy: {exc}".encode()
        self.send_response(status)
        for name, value in reply_headers:
            if name.lower() not in _HOP_BY_HOP | {"content-length", "transfer-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_GET  # noqa: N815 - http.server's names


class Proxy(HTTPBackend):
    """A forwarding HTTP proxy on 127.0.0.1 that records every request that passes through it."""

    def __init__(self) -> None:
        self._seen: list[Proxied] = []
        self._lock = threading.Lock()
        super().__init__(_ProxyHandler, name="proxy")
        self.start()

    def record(self, proxied: Proxied) -> None:
        with self._lock:
            self._seen.append(proxied)

    @property
    def seen(self) -> list[Proxied]:
        """Every request the proxy was asked to forward, in order."""
        with self._lock:
            return list(self._seen)

    def close(self) -> None:
        """Stop accepting, cut open connections and join every thread."""
        self.kill()


StartBackends = Callable[[int], Backends]
"""The type of the ``backends`` fixture."""
MakeBalancer = Callable[..., LoadBalancer]
"""The type of the ``make_lb`` fixture."""


@pytest.fixture
def backends() -> Iterator[StartBackends]:
    """``backends(n)`` starts n backends; all are killed (threads joined) after the test."""
    started: list[Backend] = []

    def start(count: int) -> Backends:
        new = Backends(Backend(f"b{len(started) + i}") for i in range(count))
        started.extend(new)
        return new

    yield start
    for backend in started:
        backend.kill()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A recording forward proxy on 127.0.0.1, closed after the test."""
    started = Proxy()
    yield started
    started.close()


@pytest.fixture
def make_lb(zk_hosts: str, service: str) -> Iterator[MakeBalancer]:
    """``make_lb(backends, strategy=..., weights=..., **options)``: a started balancer for the test's
    service with the backends registered in ZooKeeper (and seen in its pool); ``options`` go to
    `LoadBalancer` (``health=...``). Closed after the test."""
    made: list[LoadBalancer] = []

    def make(
        servers: Sequence[Backend],
        *,
        strategy: str = "round_robin",
        weights: Sequence[int] | None = None,
        **options: Any,
    ) -> LoadBalancer:
        lb = LoadBalancer(zk_hosts, service, strategy=strategy, **options)
        made.append(lb)
        lb.start(timeout=30)
        for backend, weight in zip(servers, weights or [1] * len(servers), strict=True):
            backend.instance_id = lb.add_server(backend.url, weight=weight).instance.id
        assert len(lb.servers()) == len(servers)
        return lb

    yield make
    for lb in made:
        lb.close()


@pytest.fixture
def one_dead(backends: StartBackends, make_lb: MakeBalancer) -> tuple[LoadBalancer, Backend]:
    """A balancer over two registered backends, the first of which refuses connections: (lb, alive)."""
    dead, alive = backends(2)
    lb = make_lb([dead, alive])
    dead.kill()  # still registered: the balancer keeps sending it its share
    return lb, alive
