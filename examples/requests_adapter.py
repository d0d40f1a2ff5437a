"""A requests Session through the balancer: redirects, and a backend that dies half-way.

    python examples/requests_adapter.py

Starts its own single-node ZooKeeper (``zklb.testing``: needs Debian's ``zookeeper`` package and Java)
and three tiny HTTP servers on 127.0.0.1, registers them as service ``api`` and balances the session's
requests to ``api`` with ``zklb.requests.mount(session, lb)``. Then it follows a relative redirect
through the balancer and stops one backend (still registered) in the middle of twelve GETs: they are
retried on the others, and none fails. Cleans up on exit.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import zklb.requests
from zklb import LoadBalancer
from zklb.testing import ZooKeeperEnsemble


class Hello(BaseHTTPRequestHandler):
    """``/old`` redirects to ``/new``; everything else answers with the port that served it.

    HTTP/1.0, one request per connection: once the server is stopped, nothing reaches it any more.
    """

    def do_GET(self) -> None:
        port = self.connection.getsockname()[1]
        body = f"port {port}".encode()
        self.send_response(302 if self.path == "/old" else 200)
        if self.path == "/old":
            self.send_header("Location", "/new")  # relative: resolved against http://api/old
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_backend() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    backends = [start_backend() for _ in range(3)]
    try:
        with (
            ZooKeeperEnsemble(size=1) as zk,
            LoadBalancer(zk.hosts, "api") as lb,
            requests.Session() as session,
        ):
            for backend in backends:
                lb.add_server(f"http://127.0.0.1:{backend.server_address[1]}")
            zklb.requests.mount(session, lb)  # every request to host "api", with or without userinfo

            response = session.get("http://api/old", timeout=5)
            hops = " -> ".join(r.url for r in [*response.history, response])
            print(f"redirect: {hops} ({response.text})")

            for i in range(12):
                if i == 4:
                    dead = backends[0]
                    dead.shutdown()
                    dead.server_close()  # connections to it are refused from now on
                    print(f"-- stopped port {dead.server_address[1]} (it stays registered)")
                response = session.get(f"http://api/orders/{i}", timeout=5)
                print(f"GET /orders/{i}: {response.status_code} from {response.text}")

            by_id = {s.id: s.port for s in lb.servers()}
            for key, stats in lb.stats().items():
                print(f"port {by_id[key]}: {stats.requests} requests, {stats.failures} failed")
    finally:
        for backend in backends[1:]:
            backend.shutdown()
            backend.server_close()


if __name__ == "__main__":
    main()
