"""httpx through the balancer: three local backends registered in ZooKeeper, one logical host name.

    python examples/httpx_sync.py

Starts its own single-node ZooKeeper (``zklb.testing``: needs Debian's ``zookeeper`` package and Java)
and three tiny HTTP servers on 127.0.0.1, registers them as service ``api``, and sends requests to
``http://api/...``: the transport rewrites each to the instance the balancer picks. Cleans up on exit.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from zklb import LoadBalancer
from zklb.httpx import LoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with the port that served it."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        port = self.connection.getsockname()[1]
        body = f"served {self.path} on port {port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(port))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the example's output readable


def start_backend() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    backends = [start_backend() for _ in range(3)]
    try:
        with ZooKeeperEnsemble(size=1) as zk, LoadBalancer(zk.hosts, "api", strategy="round_robin") as lb:
            for backend in backends:
                lb.add_server(f"http://127.0.0.1:{backend.server_address[1]}")
            served: Counter[str] = Counter()
            with httpx.Client(transport=LoadBalancedTransport(lb)) as client:
                for i in range(9):
                    response = client.get(f"http://api/users/{i}")
                    served[response.headers["X-Served-By"]] += 1
                    print(f"{response.url} -> {response.text.strip()}")
                # A streamed response keeps its instance busy until the block ends.
                with client.stream("GET", "http://api/report") as response:
                    in_flight = sorted(st.in_flight for st in lb.stats().values())
                    print(f"while a response streams, requests in flight per instance: {in_flight}")
                    response.read()
                print(f"after it is closed: {sorted(st.in_flight for st in lb.stats().values())}")
            print(f"requests per backend port: {dict(served)}")
    finally:
        for backend in backends:
            backend.shutdown()
            backend.server_close()


if __name__ == "__main__":
    main()
