"""What does the balancer cost per request? A plain httpx.Client against the cost of LoadBalancedTransport.

One tiny HTTP server (its own process, so it does not compete with the client for the GIL; HTTP/1.1
keep-alive, a canned 2-byte answer) is registered in a real single-node ZooKeeper. The same run then
times, in interleaved rounds:

- ``plain``: ``httpx.Client()`` sending ``GET http://127.0.0.1:<port>/`` straight to the server;
- ``balanced``: ``httpx.Client(transport=LoadBalancedTransport(lb))`` sending ``GET http://bench/``;
- ``balanced, no retry``: the same with ``retry=None``.

The server answers in microseconds, so the numbers are the client side's. Run::

    python benchmarks/bench_http.py [--requests 3000] [--rounds 7]

Prints requests per second (median of the rounds) and the overhead against ``plain``: the extra time per
request, paired round by round, median over the rounds (target: <= 5%).
"""

from __future__ import annotations

import argparse
import functools
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx

from zklb.balancer import LoadBalancer
from zklb.httpx import LoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble

SERVICE = "bench"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


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


def rate(send: Callable[[], httpx.Response], count: int) -> float:
    """Requests per second over ``count`` sequential requests."""
    start = time.perf_counter()
    for _ in range(count):
        response = send()
        if response.status_code != 200:
            raise RuntimeError(f"unexpected status {response.status_code}")
    return count / (time.perf_counter() - start)


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

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with ZooKeeperEnsemble(size=1) as zk, LoadBalancer(zk.hosts, SERVICE) as lb:  # started on entry
            lb.add_server(f"http://127.0.0.1:{port}")
            run(port, lb, args.requests, args.rounds)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def run(port: int, lb: LoadBalancer, count: int, rounds: int) -> None:
    """Time the three clients in interleaved rounds and print the medians."""
    clients = {
        "plain": (httpx.Client(), f"http://127.0.0.1:{port}/"),
        "balanced": (httpx.Client(transport=LoadBalancedTransport(lb)), f"http://{SERVICE}/"),
        "balanced, no retry": (
            httpx.Client(transport=LoadBalancedTransport(lb, retry=None)),
            f"http://{SERVICE}/",
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for client, url in clients.values():  # warm up: connections open, code paths hot
            rate(functools.partial(client.get, url), 200)
        names = list(clients)
        for i in range(rounds):
            # Rotate the order so that no client always runs first (or last) in a round.
            for name in names[i % len(names) :] + names[: i % len(names)]:
                client, url = clients[name]
                results[name].append(rate(functools.partial(client.get, url), count))
    finally:
        for client, _ in clients.values():
            client.close()

    print(f"{count} sequential GETs x {rounds} interleaved rounds, one keep-alive connection each")
    print(f"{'client':<20} {'median req/s':>12} {'min':>9} {'max':>9} {'overhead':>9}")
    plain = results["plain"]
    for name, rates in results.items():
        # Overhead = extra time per request relative to plain, paired round by round (the two ran
        # back to back, so a slower spell of the machine affects both) and then the median taken.
        overhead = statistics.median(p / r - 1 for p, r in zip(plain, rates, strict=True))
        print(
            f"{name:<20} {statistics.median(rates):>12.0f} {min(rates):>9.0f} {max(rates):>9.0f} "
            f"{overhead:>+9.1%}"
        )
    extra = statistics.median(1 / r - 1 / p for p, r in zip(plain, results["balanced"], strict=True))
    print(f"balanced spends {extra * 1e6:.1f} us more per request than plain (median of rounds)")


if __name__ == "__main__":
    main()
