"""Lifecycle edges of `LoadBalancer` that need no running ZooKeeper (its address refuses connections)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from zklb import LoadBalancer, NoServerAvailable
from zklb._pool import State
from zklb.httpx import AsyncLoadBalancedTransport


def refused_address() -> str:
    """A loopback address where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_a_pick_between_started_and_its_pick_function_does_not_recurse() -> None:
    lb = LoadBalancer(refused_address(), "svc")
    try:
        # The instant a start completes: the state says started, the pick function is not yet swapped
        # in. A pick there used to call itself until RecursionError.
        lb._state = State.STARTED
        with pytest.raises(NoServerAvailable, match="starting"):
            lb.get_server()
    finally:
        lb._state = State.NEW
        lb.close()


def test_the_async_transport_reports_a_balancer_that_cannot_start_as_a_connect_error() -> None:
    lb = LoadBalancer(refused_address(), "svc", start_timeout=0.5, request_timeout=0.5)

    async def main() -> None:
        transport = AsyncLoadBalancedTransport(lb)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get("http://svc/")
            assert isinstance(info.value, NoServerAvailable)
            assert "could not start" in str(info.value)

    try:
        asyncio.run(main())
    finally:
        lb.close()
