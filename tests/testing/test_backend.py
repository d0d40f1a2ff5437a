"""Tests for zklb.testing.HTTPBackend against real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from zklb.testing import HTTPBackend, HTTPBackendHandler


class _Hello(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"hello from {self.backend.name}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _get(connection: http.client.HTTPConnection) -> str:
    connection.request("GET", "/")
    return connection.getresponse().read().decode()


def test_kill_refuses_connects_cuts_connections_and_start_serves_again_on_the_same_port() -> None:
    backend = HTTPBackend(_Hello, name="b1").start()
    port = backend.port
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        assert port != 0
        assert backend.url == f"http://127.0.0.1:{port}"
        assert _get(kept) == "hello from b1"
        sock = kept.sock
        assert _get(kept) == "hello from b1"
        assert kept.sock is sock  # HTTP/1.1 keep-alive: the same connection served both
        threads = backend.threads
        assert len(threads) == 2  # the accept loop and the one connection

        backend.kill()
        assert not backend.running
        assert not any(t.is_alive() for t in threads)  # every thread joined
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(ConnectionError):  # the open connection was cut
            _get(kept)
        backend.kill()  # idempotent

        backend.start()
        assert backend.running
        assert backend.port == port
        again = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            assert _get(again) == "hello from b1"
        finally:
            again.close()
        with pytest.raises(RuntimeError, match="already running"):
            backend.start()
    finally:
        kept.close()
        backend.kill()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


class _Waiting(HTTPBackend):
    """A backend whose one route waits until it is killed."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.release = threading.Event()
        super().__init__(_Wait, name="waiting")

    def on_kill(self) -> None:
        self.release.set()


class _Wait(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        backend = self.backend
        assert isinstance(backend, _Waiting)
        backend.waiting.set()
        backend.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_kill_wakes_a_waiting_handler_through_on_kill_and_with_kills_at_the_end() -> None:
    ended: list[BaseException | str] = []

    def client(port: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            ended.append(_get(connection))
        except (OSError, http.client.HTTPException) as exc:  # answered or cut: either is an end
            ended.append(exc)
        finally:
            connection.close()

    with _Waiting() as backend:
        caller = threading.Thread(target=client, args=(backend.port,))
        caller.start()
        assert backend.waiting.wait(10)
        start = time.monotonic()
        backend.kill()
        assert time.monotonic() - start < 5  # not the handler's 30 s: on_kill released it
        caller.join(10)
        assert not caller.is_alive() and len(ended) == 1
        assert not any(t.is_alive() for t in backend.threads)
    assert not backend.running
