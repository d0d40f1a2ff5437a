"""httpx.AsyncClient through the balancer, with least-connections steering around a slow backend.

    python examples/httpx_async.py

Starts its own single-node ZooKeeper (``zklb.testing``: needs Debian's ``zookeeper`` package and Java)
and three tiny HTTP servers on 127.0.0.1, one of them slow. Six concurrent callers send sixty requests
to ``http://api/...``; least-connections sends few of them to the slow one, whose requests stay in
flight longer. Cleans up on exit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from zklb import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble

DELAY: dict[int, float] = {}  # port -> seconds each answer takes


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with the port that served it, after that port's delay."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        port = self.connection.getsockname()[1]
        time.sleep(DELAY.get(port, 0.0))
        body = f"port {port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_backend(delay: float) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    DELAY[server.server_address[1]] = delay
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def fetch_all(lb: LoadBalancer) -> Counter[str]:
    served: Counter[str] = Counter()

    async def worker(client: httpx.AsyncClient, name: int) -> None:
        for i in range(10):
            response = await client.get(f"http://api/items/{name}-{i}")
            served[response.text] += 1

    async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb)) as client:
        # Six callers at once, ten requests each: a slow backend keeps its requests in flight longer,
        # and least-connections sends the next request to a less busy one.
        await asyncio.gather(*(worker(client, n) for n in range(6)))
    return served


def main() -> None:
    backends = [start_backend(0.2), start_backend(0.0), start_backend(0.0)]
    try:
        with (
            ZooKeeperEnsemble(size=1) as zk,
            LoadBalancer(zk.hosts, "api", strategy="least_connections") as lb,
        ):
            for backend in backends:
                lb.add_server(f"http://127.0.0.1:{backend.server_address[1]}")
            served = asyncio.run(fetch_all(lb))
            for backend in backends:
                port = backend.server_address[1]
                print(f"port {port} (answers in {DELAY[port]:.1f} s): {served[f'port {port}']} requests")
            print(f"all {sum(served.values())} requests answered")
    finally:
        for backend in backends:
            backend.shutdown()
            backend.server_close()


if __name__ == "__main__":
    main()
