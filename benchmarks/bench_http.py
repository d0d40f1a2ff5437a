"""What does zklb cost per request? Each HTTP client with and without zklb, against one local server.

One tiny HTTP server (its own process, so it does not compete with the client for the GIL; HTTP/1.1
keep-alive, a canned 2-byte answer) is registered in a real ZooKeeper. The same run then times, in
interleaved rounds, sequential ``GET``s over one keep-alive connection from each pair of clients:

- ``httpx``: ``httpx.Client()`` to ``http://127.0.0.1:<port>/``, against ``httpx + zklb``:
  ``httpx.Client(transport=LoadBalancedTransport(lb))`` to ``http://bench/``;
- ``httpx async``: the same with ``httpx.AsyncClient`` and ``AsyncLoadBalancedTransport``;
- ``requests``: ``requests.Session()``, against ``requests + zklb``: a session with
  ``zklb.requests.mount(session, lb)``.

The server answers in microseconds, so the numbers are the client side's. Run::

    python benchmarks/bench_http.py [--requests 3000] [--rounds 7]

Prints requests per second (median of the rounds) and each zklb client's overhead against the same
client without zklb: the extra time per request, paired round by round, median over the rounds
(target: <= 5%). ``report.py`` puts the same figures in the benchmark report (``scenario_transport``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import requests

import zklb.requests
from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble

SERVICE = "bench"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
# Each client without zklb, then the same client with it: the pairs the overhead is computed on.
PAIRS = (("httpx", "httpx + zklb"), ("httpx async", "httpx async + zklb"), ("requests", "requests + zklb"))


def serve() -> None:
    """The backend: one thread per connection, a canned answer per request head (no request bodies)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(listener.getsockname()[1], flush=True)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = b""
            while data := conn.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    _, pending = pending.split(b"\r\n\r\n", 1)
                    conn.sendall(RESPONSE)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


@contextmanager
def backend() -> Iterator[int]:
    """The server of `serve` in a child process; yields its port."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def check(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"unexpected status {status}")


def senders(port: int, lb: LoadBalancer, stack: ExitStack) -> dict[str, Callable[[int], float]]:
    """Each client of `PAIRS`, as a function of a request count giving requests per second."""
    direct, balanced = f"http://127.0.0.1:{port}/", f"http://{lb.service}/"
    loop = asyncio.new_event_loop()  # one loop for every round: the async clients' pools live in it
    stack.callback(loop.close)

    def sync(client: httpx.Client | requests.Session, url: str) -> Callable[[int], float]:
        stack.callback(client.close)

        def timed(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                check(client.get(url).status_code)
            return count / (time.perf_counter() - start)

        return timed

    def asynchronous(client: httpx.AsyncClient, url: str) -> Callable[[int], float]:
        stack.callback(lambda: loop.run_until_complete(client.aclose()))

        async def send(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                check((await client.get(url)).status_code)
            return count / (time.perf_counter() - start)

        return lambda count: loop.run_until_complete(send(count))

    mounted = requests.Session()
    zklb.requests.mount(mounted, lb)
    return {
        "httpx": sync(httpx.Client(), direct),
        "httpx + zklb": sync(httpx.Client(transport=LoadBalancedTransport(lb)), balanced),
        "httpx async": asynchronous(httpx.AsyncClient(), direct),
        "httpx async + zklb": asynchronous(
            httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb)), balanced
        ),
        "requests": sync(requests.Session(), direct),
        "requests + zklb": sync(mounted, balanced),
    }


def measure(port: int, lb: LoadBalancer, count: int, rounds: int) -> dict[str, list[float]]:
    """Requests/s of every client, one figure per interleaved round."""
    with ExitStack() as stack:
        clients = senders(port, lb, stack)
        for timed in clients.values():  # warm up: connections open, code paths hot
            timed(min(200, count))
        results: dict[str, list[float]] = {name: [] for name in clients}
        names = list(clients)
        for i in range(rounds):
            # Rotate the order so that no client always runs first (or last) in a round.
            for name in names[i % len(names) :] + names[: i % len(names)]:
                results[name].append(clients[name](count))
    return results


def overhead(plain: list[float], balanced: list[float]) -> float:
    """Extra time per request relative to ``plain``, paired round by round (the two ran back to back,
    so a slower spell of the machine affects both), median over the rounds."""
    return statistics.median(p / r - 1 for p, r in zip(plain, balanced, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    with backend() as port, ZooKeeperEnsemble(size=1) as zk, LoadBalancer(zk.hosts, SERVICE) as lb:
        lb.add_server(f"http://127.0.0.1:{port}")
        results = measure(port, lb, args.requests, args.rounds)
    print(
        f"{args.requests} sequential GETs x {args.rounds} interleaved rounds, one keep-alive connection each"
    )
    print(f"{'client':<20} {'median req/s':>12} {'min':>9} {'max':>9} {'overhead':>9}")
    for plain, balanced in PAIRS:
        for name in (plain, balanced):
            rates = results[name]
            print(
                f"{name:<20} {statistics.median(rates):>12.0f} {min(rates):>9.0f} {max(rates):>9.0f} "
                f"{overhead(results[plain], rates):>+9.1%}"
            )


if __name__ == "__main__":
    main()
