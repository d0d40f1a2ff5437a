"""``RetryPolicy(deadline=...)`` against real servers that hang: the deadline bounds the whole request.

Without a deadline the caller's timeout applies to each attempt, so three stalled instances turn a
0.5 s timeout into 1.5 s. With ``deadline=0.8`` the first attempt gets its 0.5 s, the second only the
0.3 s left, and no third starts; the caller gets the client's own timeout error, as without zklb.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx
import pytest
import requests

from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.requests import LoadBalancedAdapter
from zklb.retry import RetryPolicy

if TYPE_CHECKING:
    from tests.transports.conftest import MakeBalancer, StartBackends

TIMEOUT = 0.5
DEADLINE = 0.8
# How late a timeout may fire on a loaded 2-core machine; well below the 0.7 s a third attempt would add.
SLACK = 0.35


def attempts_made(lb: LoadBalancer) -> int:
    """Attempts the balancer has seen end (each stalled attempt ends as a failure)."""
    return sum(s.requests for s in lb.stats().values())


def test_httpx_deadline_cuts_the_last_attempt(
    backends: StartBackends, make_lb: MakeBalancer, capsys: pytest.CaptureFixture[str]
) -> None:
    lb = make_lb(backends(3))
    url = f"http://{lb.service}/stall"

    def get(policy: RetryPolicy) -> float:
        transport = LoadBalancedTransport(lb, retry=policy)
        with httpx.Client(transport=transport, timeout=TIMEOUT) as c:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                c.get(url)
            return time.monotonic() - started

    per_attempt = get(RetryPolicy())
    assert attempts_made(lb) == 3
    assert per_attempt >= 3 * TIMEOUT  # the caller's timeout, three times over

    bounded = get(RetryPolicy(deadline=DEADLINE))
    assert attempts_made(lb) == 3 + 2
    assert DEADLINE - 0.05 <= bounded < DEADLINE + SLACK, bounded
    with capsys.disabled():
        print(
            f"\n[httpx deadline] 3 stalled instances, timeout={TIMEOUT}: {per_attempt:.2f} s without a "
            f"deadline, {bounded:.2f} s with deadline={DEADLINE}"
        )


def test_httpx_deadline_shorter_than_the_timeout(backends: StartBackends, make_lb: MakeBalancer) -> None:
    lb = make_lb(backends(3))
    transport = LoadBalancedTransport(lb, retry=RetryPolicy(deadline=0.3))
    with httpx.Client(transport=transport, timeout=10) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.get(f"http://{lb.service}/stall")
        took = time.monotonic() - started
    assert attempts_made(lb) == 1  # one attempt, cut to the deadline; no time left for another
    assert took < 0.3 + SLACK


def test_async_httpx_deadline_cuts_the_last_attempt(backends: StartBackends, make_lb: MakeBalancer) -> None:
    lb = make_lb(backends(3))

    async def main() -> float:
        transport = AsyncLoadBalancedTransport(lb, retry=RetryPolicy(deadline=DEADLINE))
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as c:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await c.get(f"http://{lb.service}/stall")
            return time.monotonic() - started

    took = asyncio.run(main())
    assert attempts_made(lb) == 2
    assert DEADLINE - 0.05 <= took < DEADLINE + SLACK, took


def test_requests_deadline_cuts_the_last_attempt(
    backends: StartBackends, make_lb: MakeBalancer, capsys: pytest.CaptureFixture[str]
) -> None:
    lb = make_lb(backends(3))
    url = f"http://{lb.service}/stall"

    def get(policy: RetryPolicy, timeout: float | tuple[float, float]) -> float:
        with requests.Session() as s:
            s.trust_env = False
            s.mount(f"http://{lb.service}/", LoadBalancedAdapter(lb, retry=policy))
            started = time.monotonic()
            with pytest.raises(requests.ReadTimeout):
                s.get(url, timeout=timeout)
            return time.monotonic() - started

    per_attempt = get(RetryPolicy(), TIMEOUT)
    assert attempts_made(lb) == 3
    assert per_attempt >= 3 * TIMEOUT

    bounded = get(RetryPolicy(deadline=DEADLINE), (5.0, TIMEOUT))
    assert attempts_made(lb) == 3 + 2
    assert DEADLINE - 0.05 <= bounded < DEADLINE + SLACK, bounded
    with capsys.disabled():
        print(
            f"\n[requests deadline] 3 stalled instances, timeout={TIMEOUT}: {per_attempt:.2f} s without a "
            f"deadline, {bounded:.2f} s with deadline={DEADLINE}"
        )
