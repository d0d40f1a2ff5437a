"""zklb.httpx against real HTTP servers registered in a real ZooKeeper, with the real httpx clients."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from zklb.balancer import LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport, NoServerAvailableError
from zklb.instance import ServiceInstance
from zklb.retry import RetryPolicy

if TYPE_CHECKING:
    from tests.transports.conftest import Backend, MakeBalancer, StartBackends

TIMEOUT = httpx.Timeout(10.0)
STATIC_URLS = ("http://10.0.0.1:81", "http://10.0.0.2:82", "http://10.0.0.3:83")


def client(lb: LoadBalancer, **kwargs: object) -> httpx.Client:
    return httpx.Client(transport=LoadBalancedTransport(lb, **kwargs), timeout=TIMEOUT)  # type: ignore[arg-type]


def in_flight(lb: LoadBalancer, backend: Backend) -> int:
    return lb.stats()[backend.instance_id].in_flight


# -- routing -----------------------------------------------------------------------------------------


def test_round_robin_spreads_evenly(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="round_robin")
    with client(lb) as c:
        names = [c.get(f"http://{lb.service}/users/{i}").json()["backend"] for i in range(30)]
    assert servers.counts() == [10, 10, 10]
    assert sorted(set(names)) == sorted(b.name for b in servers)


def test_weighted_round_robin_follows_weights(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="weighted_round_robin", weights=[1, 2, 3])
    with client(lb) as c:
        for _ in range(60):
            c.get(f"http://{lb.service}/")
    assert servers.counts() == [10, 20, 30]


def test_least_connections_avoids_a_backend_holding_a_stream(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="least_connections")
    by_name = {b.name: b for b in servers}
    with client(lb) as c, c.stream("GET", f"http://{lb.service}/stream") as slow:
        busy = by_name[slow.headers["X-Backend"]]
        assert in_flight(lb, busy) == 1
        before = busy.count
        names = [c.get(f"http://{lb.service}/").json()["backend"] for _ in range(12)]
        assert busy.name not in names
        assert busy.count == before
        assert len(set(names)) == 2  # the two idle ones take turns
        busy.release.set()
        assert slow.read() == busy.STREAM_HEAD + busy.STREAM_TAIL
    assert in_flight(lb, busy) == 0


def test_path_query_headers_and_body_are_kept(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with client(lb) as c:
        got = c.post(
            f"http://{lb.service}:8080/a/b?x=1&y=two", content=b"payload", headers={"X-Test": "yes"}
        ).json()
    assert (got["method"], got["path"], got["body"]) == ("POST", "/a/b?x=1&y=two", "payload")
    assert got["headers"]["X-Test"] == "yes"


def test_host_header_is_the_backend_by_default(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with client(lb) as c:
        assert c.get(f"http://{lb.service}/").json()["host"] == f"127.0.0.1:{server.port}"
    with client(lb, preserve_host=True) as c:
        assert c.get(f"http://{lb.service}/").json()["host"] == lb.service


def test_other_hosts_pass_through_untouched(backends: StartBackends, make_lb: MakeBalancer) -> None:
    registered, outside = backends(2)
    lb = make_lb([registered])
    with client(lb) as c:
        assert c.get(f"{outside.url}/x").json()["backend"] == outside.name
    assert (registered.count, outside.count) == (0, 1)


# -- response lifetime -------------------------------------------------------------------------------


def test_stream_holds_the_instance_until_closed(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with client(lb) as c:
        with c.stream("GET", f"http://{lb.service}/stream") as response:
            chunks = response.iter_raw()
            assert next(chunks) == server.STREAM_HEAD
            assert in_flight(lb, server) == 1  # headers and a chunk in: still in flight
            server.release.set()
            assert b"".join(chunks) == server.STREAM_TAIL  # httpx closes a response read to its end
            assert in_flight(lb, server) == 0
        assert in_flight(lb, server) == 0
        c.get(f"http://{lb.service}/")
        assert in_flight(lb, server) == 0
    stats = lb.stats()[server.instance_id]
    assert (stats.requests, stats.failures) == (2, 0)


def test_async_stream_holds_the_instance_until_closed(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])

    async def main() -> None:
        transport = AsyncLoadBalancedTransport(lb)
        async with (
            httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as c,
            c.stream("GET", f"http://{lb.service}/stream") as response,
        ):
            assert response.status_code == 200
            assert in_flight(lb, server) == 1
            chunks = response.aiter_raw()
            assert await anext(chunks) == server.STREAM_HEAD
            assert in_flight(lb, server) == 1
            await response.aclose()  # closed before the end: released all the same
            assert in_flight(lb, server) == 0

    asyncio.run(main())


def test_5xx_counts_as_a_failure(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    server.status = 500
    with client(lb) as c:
        assert c.get(f"http://{lb.service}/").status_code == 500
        server.status = 200
        assert c.get(f"http://{lb.service}/").status_code == 200
    stats = lb.stats()[server.instance_id]
    assert (stats.requests, stats.failures, stats.consecutive_failures) == (2, 1, 0)


# -- redirects ---------------------------------------------------------------------------------------


def test_relative_redirect_goes_through_the_balancer(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(2)
    lb = make_lb(servers)
    with httpx.Client(transport=LoadBalancedTransport(lb), follow_redirects=True, timeout=TIMEOUT) as c:
        response = c.get(f"http://{lb.service}/redirect/relative")
    assert response.status_code == 200
    assert str(response.url) == f"http://{lb.service}/target"
    assert [str(r.url) for r in response.history] == [f"http://{lb.service}/redirect/relative"]
    assert response.json()["path"] == "/target"
    assert servers.counts() == [1, 1]  # round robin: the redirect was balanced again
    assert all(s.in_flight == 0 for s in lb.stats().values())


def test_absolute_redirect_goes_where_it_points(backends: StartBackends, make_lb: MakeBalancer) -> None:
    registered, outside = backends(2)
    lb = make_lb([registered])
    with httpx.Client(transport=LoadBalancedTransport(lb), follow_redirects=True, timeout=TIMEOUT) as c:
        response = c.get(f"http://{lb.service}/redirect/absolute", params={"to": f"{outside.url}/elsewhere"})
    assert str(response.url) == f"{outside.url}/elsewhere"
    assert response.json()["backend"] == outside.name
    assert (registered.count, outside.count) == (1, 1)


# -- retries -----------------------------------------------------------------------------------------


def test_retryable_status_is_retried_on_another_backend(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    servers = backends(2)
    lb = make_lb(servers)
    servers[0].status = 503
    with client(lb) as c:
        bodies = [c.get(f"http://{lb.service}/").json() for _ in range(4)]
    assert {b["backend"] for b in bodies} == {servers[1].name}
    assert servers[1].count == 4
    # every 503 is a failure of the backend that sent it (how many depends on the strategy's turns)
    assert lb.stats()[servers[0].instance_id].failures == servers[0].count >= 1
    assert all(s.in_flight == 0 for s in lb.stats().values())


def test_killed_backend_under_load_fails_no_get(
    backends: StartBackends, make_lb: MakeBalancer, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = backends(3)
    lb = make_lb(servers)
    victim = servers[0]
    total, workers = 300, 6
    done = 0
    failures: list[str] = []
    lock = threading.Lock()
    halfway = threading.Event()
    deadline = time.monotonic() + 30

    def worker(c: httpx.Client, n: int) -> None:
        nonlocal done
        for _ in range(n):
            if time.monotonic() > deadline:
                failures.append("timed out")
                return
            try:
                status = c.get(f"http://{lb.service}/").status_code
                if status != 200:
                    failures.append(f"status {status}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            with lock:
                done += 1
                if done == total // 3:
                    halfway.set()

    # Default settings: passive health ejects the dead one after a few failures, so the default retry
    # budget (Envoy's: 20% of requests in flight, at least 3) is never outrun.
    transport = LoadBalancedTransport(lb)
    policy = transport.retry
    assert policy is not None
    with httpx.Client(transport=transport, timeout=TIMEOUT) as c:
        threads = [threading.Thread(target=worker, args=(c, total // workers)) for _ in range(workers)]
        for t in threads:
            t.start()
        assert halfway.wait(20)
        victim.kill()
        assert not any(t.is_alive() for t in victim.threads)  # kill() joined every server thread
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    stats = lb.stats()
    with capsys.disabled():
        print(
            f"\n[httpx killed backend] {total} GETs, {len(failures)} failed; served per backend "
            f"{servers.counts()}; failures recorded on the killed one: {stats[victim.instance_id].failures}; "
            f"retries denied by the budget: {policy.budget.denied}"
        )
    assert failures == []
    assert sum(servers.counts()) >= total
    assert stats[victim.instance_id].failures > 0
    assert stats[victim.instance_id].ejected
    assert all(s.in_flight == 0 for s in stats.values())


def test_post_is_not_retried_by_default(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, alive = one_dead
    errors = 0
    with client(lb) as c:
        for _ in range(4):
            try:
                assert c.post(f"http://{lb.service}/", content=b"x").status_code == 200
            except httpx.ConnectError:
                errors += 1
    assert (errors, alive.count) == (2, 2)  # round robin: every other POST met the dead backend


def test_post_is_retried_when_opted_in(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, alive = one_dead
    with client(lb, retry=RetryPolicy(retry_non_idempotent=True)) as c:
        statuses = [c.post(f"http://{lb.service}/", content=b"x").status_code for _ in range(4)]
    assert statuses == [200] * 4
    assert alive.count == 4


def test_streaming_request_body_is_not_retried(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, _ = one_dead

    def body() -> Iterator[bytes]:
        yield b"chunk"

    errors = 0
    with client(lb) as c:
        for _ in range(2):
            try:
                c.put(f"http://{lb.service}/", content=body())
            except httpx.ConnectError:
                errors += 1
    assert errors == 1


def test_async_client_100_concurrent_requests(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(3)
    lb = make_lb(servers)

    async def main() -> list[httpx.Response]:
        transport = AsyncLoadBalancedTransport(lb)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as c:
            return await asyncio.gather(*(c.get(f"http://{lb.service}/item/{i}") for i in range(100)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 100
    assert sorted(servers.counts()) == [33, 33, 34]
    assert all(s.in_flight == 0 for s in lb.stats().values())


# -- errors ------------------------------------------------------------------------------------------


def test_an_empty_pool_is_a_connect_error_with_the_request(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    assert lb.remove_server(server.url)  # the last instance leaves the pool: nothing to send to
    url = f"http://{lb.service}/users/1"
    with client(lb) as c, pytest.raises(httpx.ConnectError) as raised:  # what plain-httpx code handles
        c.get(url)
    error = raised.value
    assert isinstance(error, NoServerAvailable) and isinstance(error, NoServerAvailableError)
    assert (error.service, str(error.request.url)) == (lb.service, url)
    assert isinstance(error.__cause__, NoServerAvailable)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb), timeout=TIMEOUT) as c:
            with pytest.raises(httpx.HTTPError) as raised:
                await c.post(url, content=b"x")
        assert isinstance(raised.value, NoServerAvailable)
        assert raised.value.request.method == "POST"

    asyncio.run(main())
    assert server.count == 0


# -- without a network: a scripted inner transport and a static balancer ------------------------------


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streaming body that records whether it was closed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class Scripted(httpx.BaseTransport, httpx.AsyncBaseTransport):
    def __init__(self, script: Callable[[httpx.Request], int | str]) -> None:
        self.script = script
        self.bodies: list[Body] = []
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.script(request)
        if answer == "refuse":
            raise httpx.ConnectError("refused", request=request)
        assert isinstance(answer, int)
        body = Body(f"{request.url.port}".encode())
        self.bodies.append(body)
        return httpx.Response(answer, stream=body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)


def test_httpx_returns_the_last_503_readable_and_closed_the_others() -> None:
    lb = LoadBalancer.static(STATIC_URLS, service="api")
    inner = Scripted(lambda r: 503)
    with httpx.Client(
        transport=LoadBalancedTransport(lb, transport=inner, retry=RetryPolicy(sleep=lambda s: None))
    ) as c:
        response = c.get("http://api/x")
        assert response.status_code == 503
        assert response.text == str(inner.seen[-1].url.port)  # read by the client, then closed
    assert [b.closed for b in inner.bodies] == [True, True, True]
    assert sorted(r.url.port or 0 for r in inner.seen) == [81, 82, 83]
    assert {s.in_flight for s in lb.stats().values()} == {0}


def test_httpx_without_retries_sends_once() -> None:
    lb = LoadBalancer.static(STATIC_URLS, service="api")
    inner = Scripted(lambda r: "refuse")
    transport = LoadBalancedTransport(lb, transport=inner, retry=None)
    with httpx.Client(transport=transport) as c, pytest.raises(httpx.ConnectError):
        c.get("http://api/x")
    assert len(inner.seen) == 1
    assert sum(s.failures for s in lb.stats().values()) == 1


def test_async_httpx_retries_a_refused_connection_elsewhere() -> None:
    lb = LoadBalancer.static(STATIC_URLS, service="api")
    inner = Scripted(lambda r: "refuse" if r.url.port == 81 else 200)

    async def main() -> list[int]:
        # The default policy: tenacity's own async sleep, about 10 ms per retry here.
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb, transport=inner)) as c:
            return [(await c.get("http://api/x")).status_code for _ in range(6)]

    assert asyncio.run(main()) == [200] * 6
    assert [r.url.port for r in inner.seen].count(81) >= 2  # refused, then retried elsewhere
    assert all(b.closed for b in inner.bodies)
    assert {s.in_flight for s in lb.stats().values()} == {0}


def test_the_inner_transport_is_closed_with_the_transport() -> None:
    lb = LoadBalancer.static(STATIC_URLS, service="api")
    closed: list[str] = []

    class Inner(Scripted):
        def close(self) -> None:
            closed.append("sync")

        async def aclose(self) -> None:
            closed.append("async")

    with httpx.Client(transport=LoadBalancedTransport(lb, transport=Inner(lambda r: 200))):
        pass

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=AsyncLoadBalancedTransport(lb, transport=Inner(lambda r: 200))
        ):
            pass

    asyncio.run(main())
    assert closed == ["sync", "async"]
    assert lb.servers()  # the balancer is the caller's: still usable


def test_preserve_host_and_rewrite_without_a_network() -> None:
    lb = LoadBalancer.static([ServiceInstance.parse("http://[::1]:8080", ssl_port=8443)], service="api")
    inner = Scripted(lambda r: 200)
    for preserve, host in ((False, "[::1]:8443"), (True, "api")):
        with httpx.Client(transport=LoadBalancedTransport(lb, transport=inner, preserve_host=preserve)) as c:
            response = c.get("https://api/p/q?x=%20y", headers={"X-A": "1"})
        sent = inner.seen[-1]
        assert (str(sent.url), sent.headers["Host"], sent.headers["X-A"]) == (
            "https://[::1]:8443/p/q?x=%20y",
            host,
            "1",
        )
        assert str(response.url) == "https://api/p/q?x=%20y"


# -- packaging ---------------------------------------------------------------------------------------


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what `import httpx` meets when it is not installed
    monkeypatch.delitem(sys.modules, "zklb.httpx")
    with pytest.raises(ImportError, match=r"pip install zklb\[httpx\]"):
        importlib.import_module("zklb.httpx")
