"""A cancelled or interrupted request records nothing: no outcome, no latency (docs/acquire.md).

Real servers, real clients, real cancellations: an ``asyncio.timeout()`` that fires while httpx reads the
body, and a SIGINT delivered to the main thread while it is blocked reading the body (the sync twin).
``/stream`` sends its headers and a first chunk, then holds the rest back, so the read blocks for as
long as the test needs; the backend lets it go when it is killed after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import httpx
import pytest
import requests

from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.requests import LoadBalancedAdapter
from zklb.stats import InstanceStats

if TYPE_CHECKING:
    from tests.transports.conftest import Backend, MakeBalancer, StartBackends

TIMEOUT = httpx.Timeout(10.0)


def one_failure_then(lb: LoadBalancer, backend: Backend) -> InstanceStats:
    """Make one request fail on ``backend`` (a 500) and return its stats: the baseline a cancelled
    request must leave exactly as it is (a success would reset ``consecutive_failures``)."""
    with httpx.Client(transport=LoadBalancedTransport(lb, retry=None), timeout=TIMEOUT) as c:
        assert c.get(f"http://{lb.service}/status/500").status_code == 500
    stats = lb.stats()[backend.instance_id]
    assert (stats.requests, stats.failures, stats.consecutive_failures, stats.in_flight) == (1, 1, 1, 0)
    return stats


def assert_nothing_recorded(lb: LoadBalancer, backend: Backend, before: InstanceStats) -> None:
    after = lb.stats()[backend.instance_id]
    # Before the fix: requests 2, consecutive_failures 0 and the cancelled read's time as latency.
    assert after == before, f"a cancelled request changed the stats: {before} -> {after}"


def in_flight(lb: LoadBalancer, backend: Backend) -> int:
    return lb.stats()[backend.instance_id].in_flight


def frames(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def blocked_reading_body(client_module: str, reader: str) -> Callable[[FrameType], bool]:
    """A test on the main thread's stack: inside ``reader`` of ``client_module`` (the client reading
    the response body) and, innermost, waiting on a socket."""

    def test(top: FrameType) -> bool:
        stack = list(frames(top))
        in_reader = any(
            f.f_code.co_name == reader and f"{client_module}/" in f.f_code.co_filename for f in stack
        )
        return in_reader and top.f_code.co_name in {"read", "readinto", "recv", "recv_into"}

    return test


@contextlib.contextmanager
def sigint_when(blocked: Callable[[FrameType], bool], timeout: float = 10.0) -> Iterator[threading.Event]:
    """Send SIGINT to the main thread (this one) once its stack passes ``blocked``; the yielded event
    is set when it was sent. Python's own handler turns it into KeyboardInterrupt, raised where the main
    thread is: a blocked socket read returns EINTR and the handler runs there."""
    main = threading.main_thread()
    ident = main.ident
    assert threading.current_thread() is main and ident is not None
    sent = threading.Event()
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            top = sys._current_frames().get(ident)
            if top is not None and blocked(top):
                sent.set()
                signal.pthread_kill(ident, signal.SIGINT)
                return
            done.wait(0.002)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=watch, name="sigint-when")
    watcher.start()
    try:
        yield sent
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)


# -- httpx, async: asyncio.timeout() ---------------------------------------------------------------


def test_async_timeout_while_the_body_is_read_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb), timeout=TIMEOUT) as c:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:

                    async def expire_soon(response: httpx.Response) -> None:
                        # Headers are in, the body is not: the timeout fires while httpx reads it.
                        assert in_flight(lb, server) == 1
                        deadline.reschedule(loop.time() + 0.05)

                    c.event_hooks["response"] = [expire_soon]
                    await c.get(f"http://{lb.service}/stream")

    asyncio.run(main())
    assert_nothing_recorded(lb, server, before)


def test_async_timeout_in_a_stream_block_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb), timeout=TIMEOUT) as c:
            with pytest.raises(TimeoutError):
                async with (
                    asyncio.timeout(0.05),
                    c.stream("GET", f"http://{lb.service}/stream") as response,
                ):
                    async for chunk in response.aiter_raw():
                        assert chunk == server.STREAM_HEAD
                        await asyncio.Event().wait()  # the caller's own work on the chunk, cut short

    asyncio.run(main())
    assert_nothing_recorded(lb, server, before)


# -- httpx, sync: KeyboardInterrupt ----------------------------------------------------------------


def test_interrupt_while_httpx_reads_the_body_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)
    with httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as c:
        with sigint_when(blocked_reading_body("httpx", "read")) as sent, pytest.raises(KeyboardInterrupt):
            c.get(f"http://{lb.service}/stream")
        assert sent.is_set()
    assert_nothing_recorded(lb, server, before)


def test_interrupt_in_an_httpx_stream_block_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)
    with (
        httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as c,
        pytest.raises(KeyboardInterrupt),
        c.stream("GET", f"http://{lb.service}/stream") as response,
    ):
        for _ in response.iter_raw():
            raise KeyboardInterrupt  # lands in the caller's code, between two reads
    assert_nothing_recorded(lb, server, before)


def test_an_interrupted_read_records_nothing_even_if_the_caller_carries_on(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    # The interrupt is caught inside the block, so the response closes later with nothing in flight:
    # only the read itself knows it was cut short.
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)
    with (
        httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as c,
        c.stream("GET", f"http://{lb.service}/stream") as response,
    ):
        with sigint_when(blocked_reading_body("httpx", "read")) as sent, pytest.raises(KeyboardInterrupt):
            response.read()
        assert sent.is_set()
    assert_nothing_recorded(lb, server, before)


# -- requests: KeyboardInterrupt -------------------------------------------------------------------


def session(lb: LoadBalancer) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.mount(f"http://{lb.service}/", LoadBalancedAdapter(lb))
    return s


def test_interrupt_while_requests_reads_the_body_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)
    reading = blocked_reading_body("requests", "content")
    with session(lb) as s:
        with sigint_when(reading) as sent, pytest.raises(KeyboardInterrupt):
            s.get(f"http://{lb.service}/stream", timeout=10)
        assert sent.is_set()
    assert_nothing_recorded(lb, server, before)


def test_interrupt_in_a_requests_stream_block_records_nothing(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    before = one_failure_then(lb, server)
    with (
        session(lb) as s,
        pytest.raises(KeyboardInterrupt),
        s.get(f"http://{lb.service}/stream", stream=True, timeout=10) as response,
    ):
        for _ in response.iter_content(4):
            raise KeyboardInterrupt
    assert_nothing_recorded(lb, server, before)


def test_a_reader_that_stops_early_is_still_a_success(backends: StartBackends, make_lb: MakeBalancer) -> None:
    # The other side of the rule: closing a response early is the caller's choice, not a cancellation.
    (server,) = backends(1)
    lb = make_lb([server])
    with (
        httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as c,
        c.stream("GET", f"http://{lb.service}/stream") as response,
    ):
        for _ in response.iter_raw():
            break
    with session(lb) as s, s.get(f"http://{lb.service}/stream", stream=True, timeout=10) as r:
        next(r.iter_content(4))
    stats = lb.stats()[server.instance_id]
    assert (stats.requests, stats.failures, stats.in_flight) == (2, 0, 0)
