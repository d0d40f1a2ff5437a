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

    python benchmarks/bench_http.py [--requests 300] [--rounds 41] [--bytecodes]

The machine may be shared, so each round sends a short burst from one client and then from its twin
(in alternating order), and the overhead is taken per round, from bursts that ran back to back under
the same load: the median over the rounds, with the interquartile range as the spread. Two measures:

- wall: extra time per request (the requests/s lost), the target's own terms (<= 5 %);
- CPU: extra CPU time of the client thread per request, which a spell of other work on the machine
  disturbs much less (time spent waiting for the server or the scheduler is not in it); "best CPU"
  compares each client's fastest round, the one other work disturbed least.

``--bytecodes`` also counts the Python bytecodes each client runs per request (by tracing): a
figure no load changes, for finding where the time goes. ``report.py`` puts the same figures in the
benchmark report (``scenario_transport``).
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

import httpx
import requests

import zklb.requests
from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble

if TYPE_CHECKING:
    from _typeshed import TraceFunction

SERVICE = "bench"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
# Each client without zklb, then the same client with it: the pairs the overhead is computed on.
PAIRS = (("httpx", "httpx + zklb"), ("httpx async", "httpx async + zklb"), ("requests", "requests + zklb"))
# The control: two plain httpx clients, paired the same way. Its "overhead" is the noise floor of the
# run: an overhead within it is not one the run can tell from zero.
CONTROL = ("httpx (control)", "httpx (its twin)")


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


#: Send ``count`` requests; returns (wall seconds, CPU seconds of this thread) they took.
Sender = Callable[[int], tuple[float, float]]


def senders(port: int, lb: LoadBalancer, stack: ExitStack) -> dict[str, Sender]:
    """Each client of `PAIRS`, as a function of a request count giving the time it took."""
    direct, balanced = f"http://127.0.0.1:{port}/", f"http://{lb.service}/"
    loop = asyncio.new_event_loop()  # one loop for every round: the async clients' pools live in it
    stack.callback(loop.close)

    def sync(client: httpx.Client | requests.Session, url: str) -> Sender:
        stack.callback(client.close)

        def timed(count: int) -> tuple[float, float]:
            start, cpu = time.perf_counter(), time.thread_time()
            for _ in range(count):
                check(client.get(url).status_code)
            return time.perf_counter() - start, time.thread_time() - cpu

        return timed

    def asynchronous(client: httpx.AsyncClient, url: str) -> Sender:
        stack.callback(lambda: loop.run_until_complete(client.aclose()))

        async def send(count: int) -> tuple[float, float]:
            start, cpu = time.perf_counter(), time.thread_time()  # the loop runs in this thread
            for _ in range(count):
                check((await client.get(url)).status_code)
            return time.perf_counter() - start, time.thread_time() - cpu

        return lambda count: loop.run_until_complete(send(count))

    mounted = requests.Session()
    zklb.requests.mount(mounted, lb)
    return {
        "httpx": sync(httpx.Client(), direct),
        "httpx + zklb": sync(httpx.Client(transport=LoadBalancedTransport(lb)), balanced),
        CONTROL[0]: sync(httpx.Client(), direct),
        CONTROL[1]: sync(httpx.Client(), direct),
        "httpx async": asynchronous(httpx.AsyncClient(), direct),
        "httpx async + zklb": asynchronous(
            httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb)), balanced
        ),
        "requests": sync(requests.Session(), direct),
        "requests + zklb": sync(mounted, balanced),
    }


@dataclass
class Results:
    """Per client, one figure per round: requests/s (wall) and CPU seconds per request."""

    rate: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    bytecodes: dict[str, float] = field(default_factory=dict)  # per request, when counted


@dataclass(frozen=True)
class Spread:
    """The median of per-round figures and their interquartile range."""

    median: float
    low: float  # 25th percentile
    high: float  # 75th percentile

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) < 2:
            return cls(values[0], values[0], values[0])
        low, median, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, low, high)

    def __str__(self) -> str:
        return f"{self.median:+.1%} [{self.low:+.1%}, {self.high:+.1%}]"


def measure(port: int, lb: LoadBalancer, count: int, rounds: int, bytecodes: bool = False) -> Results:
    """Every client's figures, each zklb client's bursts right next to its twin's, round by round."""
    results = Results()
    with ExitStack() as stack:
        clients = senders(port, lb, stack)
        for timed in clients.values():  # warm up: connections open, code paths hot
            timed(min(200, count))
        for name in clients:
            results.rate[name], results.cpu[name] = [], []
        for i in range(rounds):
            for pair in (*PAIRS, CONTROL):
                # Alternate which of the twins goes first: neither always gets the fresher spell.
                for name in pair if i % 2 == 0 else pair[::-1]:
                    wall, cpu = clients[name](count)
                    results.rate[name].append(count / wall)
                    results.cpu[name].append(cpu / count)
        if bytecodes:
            for name, timed in clients.items():
                results.bytecodes[name] = count_bytecodes(timed, min(200, count)) / min(200, count)
    return results


def count_bytecodes(send: Sender, count: int) -> int:
    """Python bytecodes run while sending ``count`` requests (traced: slow, but independent of load)."""
    executed = 0

    def trace(frame: FrameType, event: str, arg: object) -> TraceFunction:
        nonlocal executed
        frame.f_trace_opcodes = True
        if event == "opcode":
            executed += 1
        return trace

    sys.settrace(trace)
    try:
        send(count)
    finally:
        sys.settrace(None)
    return executed


def best_cpu_overhead(plain: list[float], balanced: list[float]) -> float:
    """Extra CPU per request, fastest round against fastest round: other work on the machine only ever
    adds to a round's CPU time (contended caches, frequency), so the fastest of many rounds is the
    least disturbed figure of each client."""
    return min(balanced) / min(plain) - 1


def overhead(plain: list[float], balanced: list[float]) -> Spread:
    """Extra wall time per request relative to ``plain`` (requests/s per round), paired round by round."""
    return Spread.of([p / b - 1 for p, b in zip(plain, balanced, strict=True)])


def cpu_overhead(plain: list[float], balanced: list[float]) -> Spread:
    """Extra CPU time per request relative to ``plain`` (CPU seconds per request), paired round by round."""
    return Spread.of([b / p - 1 for p, b in zip(plain, balanced, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per client per burst")
    parser.add_argument("--rounds", type=int, default=41, help="rounds (one burst per client each)")
    parser.add_argument("--bytecodes", action="store_true", help="also count bytecodes per request")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    with backend() as port, ZooKeeperEnsemble(size=1) as zk, LoadBalancer(zk.hosts, SERVICE) as lb:
        lb.add_server(f"http://127.0.0.1:{port}")
        results = measure(port, lb, args.requests, args.rounds, args.bytecodes)
    print(
        f"{args.requests} sequential GETs per burst x {args.rounds} rounds, one keep-alive connection each;"
        " overhead: median [interquartile range] of the per-round ratios"
    )
    header = f"{'client':<20} {'req/s':>8} {'wall overhead':>24} {'CPU us/req':>11} {'CPU overhead':>24}"
    print(header + f" {'best CPU':>9}" + (f" {'bytecodes/req':>14}" if results.bytecodes else ""))
    for plain, balanced in (*PAIRS, CONTROL):
        for name in (plain, balanced):
            wall = "" if name == plain else str(overhead(results.rate[plain], results.rate[name]))
            cpu = "" if name == plain else str(cpu_overhead(results.cpu[plain], results.cpu[name]))
            best = "" if name == plain else f"{best_cpu_overhead(results.cpu[plain], results.cpu[name]):+.1%}"
            line = (
                f"{name:<20} {statistics.median(results.rate[name]):>8.0f} {wall:>24} "
                f"{statistics.median(results.cpu[name]) * 1e6:>11.1f} {cpu:>24} {best:>9}"
            )
            if results.bytecodes:
                line += f" {results.bytecodes[name]:>14.0f}"
            print(line)


if __name__ == "__main__":
    main()
