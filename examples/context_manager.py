"""The balancer without an HTTP integration: ``with lb.acquire() as server:`` around any client.

    python examples/context_manager.py

Starts its own single-node ZooKeeper (``zklb.testing``: needs Debian's ``zookeeper`` package and Java)
and two tiny HTTP servers on 127.0.0.1 (one answers 503), registers them as service ``api`` and calls
them with the standard library's ``urllib``. It shows the lease's in-flight count, how a 5xx is
reported as a failure, and a hand-written retry on a server not tried yet. Cleans up on exit.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zklb import LoadBalancer, NoServerAvailable, ServiceInstance
from zklb.testing import ZooKeeperEnsemble

BROKEN: set[int] = set()  # ports that answer 503


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        port = self.connection.getsockname()[1]
        body = f"port {port}".encode()
        self.send_response(503 if port in BROKEN else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_backend(broken: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    if broken:
        BROKEN.add(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(lb: LoadBalancer, path: str) -> str:
    """GET ``path`` from the service, trying each instance at most once."""
    tried: list[ServiceInstance] = []
    while True:
        try:
            lease = lb.acquire(exclude=tried)
        except NoServerAvailable:
            return f"every instance failed ({len(tried)} tried)"
        tried.append(lease.server)
        with lease as server:  # an exception in the block is recorded as a failure
            print(f"  {path}: {server.url} now has {lb.stats()[server.id].in_flight} request in flight")
            try:
                with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as response:
                    return f"{response.status} {response.read().decode()}"
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code < 500:
                    return f"{exc.code} from {server.url}"
                lease.report(False)  # no exception leaves the block: say it failed
                print(f"  {path}: {exc.code} from {server.url}, trying another instance")


def main() -> None:
    backends = [start_backend(broken=True), start_backend()]
    try:
        with ZooKeeperEnsemble(size=1) as zk, LoadBalancer(zk.hosts, "api") as lb:
            for backend in backends:
                lb.add_server(f"http://127.0.0.1:{backend.server_address[1]}")
            for i in range(4):
                print(f"GET /hello/{i} -> {get(lb, f'/hello/{i}')}")
            for server in lb.servers():
                stats = lb.stats()[server.id]
                print(
                    f"{server.url}: {stats.requests} requests, {stats.failures} failures, "
                    f"{stats.in_flight} in flight"
                )
    finally:
        for backend in backends:
            backend.shutdown()
            backend.server_close()


if __name__ == "__main__":
    main()
