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

``Backend.kill()`` stops the server the hard way: the listening socket is closed (new connections are
refused) and open connections are shut down; it returns once every server thread has ended.

Test modules import the names below for annotations only (``if TYPE_CHECKING:``), as
``tests.transports.conftest``; at run time they reach everything through the fixtures. The fault suite
(``tests/faults/conftest.py``) imports `Backend` and the ``backends`` fixture from here at run time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from zklb.balancer import LoadBalancer


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as a backend saw it."""

    method: str
    path: str
    host: str | None
    body: bytes


class _TrackedServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 (a free port, or ``port``) that can cut its open connections."""

    # Handler threads are joined by server_close(), so a test leaves no thread behind.
    daemon_threads = False
    block_on_close = True
    # Many concurrent connects (the async test) must not overflow the backlog (a 1 s SYN retry).
    request_queue_size = 128

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dropped connection mid-response is what the kill tests are about, not news


class _Server(_TrackedServer):
    def __init__(self, backend: Backend, port: int = 0) -> None:
        self.backend = backend
        super().__init__(_Handler, port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real services
    # A small response leaves in one write, as from most real servers (http.server's default, unbuffered,
    # writes headers and body apart, which also stalls on Nagle + delayed ACKs); /stream flushes itself.
    wbufsize = -1
    disable_nagle_algorithm = True
    timeout = 10  # an idle keep-alive connection does not hold a thread for ever
    server: _Server

    def setup(self) -> None:
        self.server.backend.record_thread(threading.current_thread())
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_GET  # noqa: N815 - http.server's names

    def _handle(self) -> None:
        backend = self.server.backend
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
        self.send_header("X-Backend", self.server.backend.name)
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


class Backend:
    """One HTTP server on 127.0.0.1 with a free port (or ``port``, to bring a killed one back at its
    address), serving from its own threads until killed."""

    STREAM_HEAD = b"first-chunk;"  # what /stream sends at once
    STREAM_TAIL = b"second-chunk"  # and after ``release`` is set

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.status = 200
        self.release = threading.Event()  # lets /stream responses finish
        self.instance_id = ""  # set when registered
        self._hits: list[Hit] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._server = _Server(self, port)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend-{name}"
        )
        self._thread.start()
        self._killed = False

    def record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def record_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.append(thread)

    @property
    def threads(self) -> list[threading.Thread]:
        """Every thread this backend has run: its accept loop and one per connection."""
        with self._lock:
            return [self._thread, *self._threads]

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

    def kill(self) -> None:
        """Refuse new connections, cut open ones, and wait for every server thread to end."""
        if self._killed:
            return
        self._killed = True
        self._server.shutdown()  # the accept loop ends...
        self._thread.join()
        self._server.socket.close()  # ...and connecting is refused from here on
        self.release.set()
        self._server.drop_connections()
        self._server.server_close()  # joins the handler threads
        left = [t.name for t in self.threads if t.is_alive()]
        assert not left, f"{self} left threads running: {left}"

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.url}>"


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


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True
    timeout = 10
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        proxy = self.server.proxy
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


class _ProxyServer(_TrackedServer):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        super().__init__(_ProxyHandler)


class Proxy:
    """A forwarding HTTP proxy on 127.0.0.1 that records every request that passes through it."""

    def __init__(self) -> None:
        self._seen: list[Proxied] = []
        self._lock = threading.Lock()
        self._server = _ProxyServer(self)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="proxy"
        )
        self._thread.start()

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
        self._server.shutdown()
        self._thread.join()
        self._server.drop_connections()
        self._server.server_close()


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
    """``make_lb(backends, strategy=..., weights=...)``: a started balancer for the test's service with
    the backends registered in ZooKeeper (and seen in its pool); closed after the test."""
    made: list[LoadBalancer] = []

    def make(
        servers: Sequence[Backend], *, strategy: str = "round_robin", weights: Sequence[int] | None = None
    ) -> LoadBalancer:
        lb = LoadBalancer(zk_hosts, service, strategy=strategy)
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
