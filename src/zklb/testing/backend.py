"""`HTTPBackend`: an HTTP/1.1 server on 127.0.0.1 that a failover test can kill hard and start again.

A killed backend is gone the way a crashed process is: its listening socket is closed, so a connect is
refused, and its open keep-alive connections are shut down, so a client that reuses one sees it reset or
closed. Unlike a crashed process it leaves nothing behind: `HTTPBackend.kill` returns once every thread
it ran has ended. `HTTPBackend.start` brings it back at the same port, as a restarted service comes back
at the address it is registered under.

The routes are the test's own: a subclass of `HTTPBackendHandler` answers the requests (``do_GET``...,
as for `http.server`), one thread per connection, and reaches the backend that serves it as
``self.backend``; a subclass of `HTTPBackend` is the place for what its routes share (counters, the
status to answer with, an event a slow route waits on).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["HTTPBackend", "HTTPBackendHandler"]

_HOST = "127.0.0.1"


class HTTPBackendHandler(BaseHTTPRequestHandler):
    """Base class for the request handlers of an `HTTPBackend`: subclasses add ``do_GET`` and the like.

    It speaks HTTP/1.1 with keep-alive, as real services do; a small response leaves in one write (with
    http.server's default, unbuffered, headers and body leave apart and stall on Nagle and delayed ACKs);
    Nagle is off; nothing is logged. A connection idle for ``timeout`` seconds is closed, so it does not
    hold a thread for ever.
    """

    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True
    timeout = 10
    server: _Server

    @property
    def backend(self) -> HTTPBackend:
        """The backend this request came to."""
        return self.server.backend

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server that keeps track of its open connections, to cut them."""

    # Connection threads are joined by server_close(): a killed backend leaves no thread behind.
    daemon_threads = False
    block_on_close = True
    # Many connects at once must not overflow the backlog (a refused SYN is retried only after 1 s).
    request_queue_size = 128
    allow_reuse_address = True  # listen again on the same port while old connections sit in TIME_WAIT

    def __init__(self, backend: HTTPBackend, handler: type[HTTPBackendHandler], port: int) -> None:
        self.backend = backend
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((_HOST, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.backend._started_thread(threading.current_thread())
        super().process_request_thread(request, client_address)

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
        pass  # a connection cut mid-response by kill() is what the backend is for, not news


class HTTPBackend:
    """A threaded HTTP/1.1 keep-alive server on 127.0.0.1 that can be killed hard and started again.

    Args:
        handler: the `HTTPBackendHandler` subclass that answers the requests.
        port: the port to listen on; 0 (the default) for a free one, kept from then on.
        name: shown in ``repr()`` and in the name of the accept thread.

    Nothing listens before `start` (or ``with``, which starts it and kills it at the end). A subclass
    sets its own attributes before it starts, as handlers may read them from the first request on.

    Example::

        class Hello(HTTPBackendHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

        with HTTPBackend(Hello) as backend:
            registry.register("api", backend.url)
            ...
            backend.kill()      # connects are refused, open connections are cut
            ...
            backend.start()     # serving again at the same address
    """

    def __init__(
        self, handler: type[HTTPBackendHandler], *, port: int = 0, name: str = "http-backend"
    ) -> None:
        self.name = name
        self._handler = handler
        self._port = port
        self._server: _Server | None = None
        self._accept: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port it listens on (0 until it first started, when it was asked for a free one)."""
        return self._port

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:<port>"``."""
        return f"http://{_HOST}:{self._port}"

    @property
    def running(self) -> bool:
        """True from `start` until `kill`."""
        return self._server is not None

    @property
    def threads(self) -> list[threading.Thread]:
        """The accept loop and the connection threads of the current (or last) run (a connection thread
        seen to have ended is dropped when the next one starts)."""
        with self._threads_lock:
            return [t for t in (self._accept, *self._threads) if t is not None]

    def start(self, timeout: float = 10.0) -> Self:
        """Listen (on the port it had, once it has one) and serve from threads of its own.

        A port still held by a connection of the last run is waited for, up to ``timeout`` seconds.

        Raises:
            RuntimeError: it is running already.
            OSError: the port could not be bound.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        deadline = time.monotonic() + timeout
        while True:
            try:
                server = _Server(self, self._handler, self._port)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self._port = server.server_address[1]
        accept = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http-backend-{self.name}"
        )
        with self._threads_lock:
            self._threads = []
            self._accept = accept
        self._server = server
        accept.start()
        return self

    def kill(self) -> None:
        """Refuse new connections, cut the open ones, and return once every thread of this backend has ended.

        Idempotent. It waits for every handler to return: a handler that waits for something (not for the
        client, whose connection is cut) is woken by `on_kill`, or holds the kill up until it is done.
        """
        server, accept = self._server, self._accept
        if server is None or accept is None:
            return
        self._server = None
        server.shutdown()  # the accept loop ends...
        accept.join()
        server.socket.close()  # ...and connecting is refused from here on
        self.on_kill()
        server.drop_connections()
        server.server_close()  # joins the connection threads (their reads end: connections are cut)
        left = [t.name for t in self.threads if t.is_alive()]
        if left:  # server_close() joined them all: the promise above, checked
            raise RuntimeError(f"{self!r} left threads running: {left}")

    def on_kill(self) -> None:
        """Called by `kill` once connects are refused and before open connections are cut: a subclass
        wakes here the handlers that wait for something (an event, a release), so that they end."""

    def _started_thread(self, thread: threading.Thread) -> None:
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "" if self.running else " (not running)"
        return f"<{type(self).__name__} {self.name} {self.url}{state}>"
