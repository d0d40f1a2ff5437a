"""A response dropped without ``close()`` does not leave its instance busy for ever (issue 14, item 2).

Real servers, real clients, real garbage collection. ``/stream`` sends its headers and a first chunk and
holds the rest back, so a response to it stays open (and its lease out) until it is closed, collected,
or its client goes away. Each test checks that the lease ends then, with no outcome recorded: a dropped
or abandoned response says nothing about the server, and its lifetime is no latency.

The balancer may apply a release made by a finaliser only on its next pick or ``stats()``; the tests
read ``stats()`` after the collection, so that is the latest they see it.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import TYPE_CHECKING

import httpx
import requests

import zklb.requests
from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.requests import LoadBalancedAdapter

if TYPE_CHECKING:
    from tests.transports.conftest import Backend, MakeBalancer, StartBackends

TIMEOUT = 10.0


def counts(lb: LoadBalancer, backend: Backend) -> tuple[int, int]:
    """(in flight, requests recorded) for ``backend``."""
    stats = lb.stats()[backend.instance_id]
    return stats.in_flight, stats.requests


def collect() -> None:
    """A real, full garbage-collection pass (twice: what one pass finalises may free more)."""
    gc.collect()
    gc.collect()


def session(lb: LoadBalancer) -> tuple[requests.Session, LoadBalancedAdapter]:
    s = requests.Session()
    s.trust_env = False  # no proxy from the environment between us and 127.0.0.1
    return s, zklb.requests.mount(s, lb)


# -- requests ----------------------------------------------------------------------------------------


def test_requests_dropped_streamed_responses_release_their_leases(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    # Before the fix: (286-288 in flight, 12-14 requests) after 300 drops and gc.collect(). The hook
    # and the urllib3 response formed a cycle; by the time a collection freed it urllib3 mostly thought
    # itself closed (lease never released), and the rest were closed by io's finaliser as successes.
    (server,) = backends(1)
    lb = make_lb([server])
    s, _ = session(lb)
    with s:
        for _ in range(300):
            s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT)  # dropped at once
        collect()
        assert counts(lb, server) == (0, 0)
        # The instance is still usable, and counted as usual.
        assert s.get(f"http://{lb.service}/ok", timeout=TIMEOUT).status_code == 200
        assert counts(lb, server) == (0, 1)


def test_requests_response_dropped_in_a_reference_cycle(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    # Only a collection frees these: it clears weak references first, then runs finalisers in no set
    # order, and urllib3 may think itself closed by then (the 298 of 300 came from this).
    (server,) = backends(1)
    lb = make_lb([server])
    s, _ = session(lb)
    with s, warnings.catch_warnings():
        # Plain requests leaks the sockets of responses collected in a cycle just the same (their
        # http.client response may be finalised first, and urllib3 then never closes them).
        warnings.simplefilter("ignore", ResourceWarning)
        gc.disable()  # no automatic pass in the middle: all 20 are still out below
        try:
            for _ in range(20):
                response = s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT)
                vars(response.raw)["cycle"] = response  # response -> raw -> response
                del response
            assert counts(lb, server) == (20, 0)
        finally:
            gc.enable()
        collect()
        assert counts(lb, server) == (0, 0)


def test_requests_session_close_ends_the_leases_of_open_responses(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    s, _ = session(lb)
    kept = [s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT) for _ in range(3)]
    assert counts(lb, server) == (3, 0)
    s.close()
    assert counts(lb, server) == (0, 0)
    for response in kept:  # closing them later changes nothing
        response.close()
    assert counts(lb, server) == (0, 0)


def test_requests_adapter_close_ends_the_leases_of_open_responses(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    # Mounted by hand, closed by hand: close() ends every lease the adapter still holds.
    (server,) = backends(1)
    lb = make_lb([server])
    s = requests.Session()
    s.trust_env = False
    adapter = LoadBalancedAdapter(lb)
    s.mount(f"http://{lb.service}/", adapter)
    kept = [s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT) for _ in range(2)]
    finished = s.get(f"http://{lb.service}/ok", timeout=TIMEOUT)  # read to the end: released already
    assert finished.status_code == 200
    assert counts(lb, server) == (2, 1)
    adapter.close()
    assert counts(lb, server) == (0, 1)
    # requests can still read a response after its adapter closes: read to its end, it counts no more.
    server.release.set()
    assert kept[0].content == server.STREAM_HEAD + server.STREAM_TAIL
    assert counts(lb, server) == (0, 1)
    del kept
    collect()
    assert counts(lb, server) == (0, 1)
    s.close()


# -- httpx, sync -------------------------------------------------------------------------------------


def send_stream(client: httpx.Client, lb: LoadBalancer) -> httpx.Response:
    return client.send(client.build_request("GET", f"http://{lb.service}/stream"), stream=True)


def test_httpx_dropped_streamed_response_releases_its_lease(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    # Before the fix: in flight for as long as the client lived.
    (server,) = backends(1)
    lb = make_lb([server])
    with httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as client:
        for _ in range(5):
            send_stream(client, lb)  # dropped at once; the client keeps its pooled connection
        collect()
        assert counts(lb, server) == (0, 0)


def test_httpx_client_close_ends_the_lease_of_an_open_stream(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    client = httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT)
    response = send_stream(client, lb)
    assert counts(lb, server) == (1, 0)
    client.close()
    assert counts(lb, server) == (0, 0)
    response.close()  # later: nothing more to release, nothing to record
    assert counts(lb, server) == (0, 0)


def test_httpx_transport_close_ends_every_lease_it_holds(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    transport = LoadBalancedTransport(lb)
    client = httpx.Client(transport=transport, timeout=TIMEOUT)
    kept = [send_stream(client, lb) for _ in range(3)]
    assert client.get(f"http://{lb.service}/ok").status_code == 200
    assert counts(lb, server) == (3, 1)
    transport.close()
    assert counts(lb, server) == (0, 1)
    del kept
    collect()
    assert counts(lb, server) == (0, 1)
    client.close()


# -- httpx, async ------------------------------------------------------------------------------------


async def asend_stream(client: httpx.AsyncClient, lb: LoadBalancer) -> httpx.Response:
    return await client.send(client.build_request("GET", f"http://{lb.service}/stream"), stream=True)


def test_httpx_async_dropped_streamed_response_releases_its_lease(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        transport = AsyncLoadBalancedTransport(lb)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            for _ in range(5):
                await asend_stream(client, lb)  # dropped at once
            collect()
            seen.append(counts(lb, server))

    asyncio.run(main())
    assert seen == [(0, 0)]


def test_httpx_async_client_close_ends_the_lease_of_an_open_stream(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        client = httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb), timeout=TIMEOUT)
        response = await asend_stream(client, lb)
        seen.append(counts(lb, server))
        await client.aclose()
        seen.append(counts(lb, server))
        await response.aclose()
        seen.append(counts(lb, server))

    asyncio.run(main())
    assert seen == [(1, 0), (0, 0), (0, 0)]
