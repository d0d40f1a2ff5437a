"""Transports with ``key=``: a request's key (from its headers) picks its instance by consistent hashing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import requests

import zklb.requests
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport

if TYPE_CHECKING:
    from tests.transports.conftest import Backend, MakeBalancer, StartBackends

TIMEOUT = 10.0
USERS = 24


def homes(servers: list[Backend]) -> dict[str, set[str]]:
    """Request path -> the backends that served it."""
    found: dict[str, set[str]] = {}
    for backend in servers:
        for hit in backend.hits:
            found.setdefault(hit.path, set()).add(backend.instance_id)
    return found


def by_header(request: httpx.Request) -> str | None:
    user: str | None = request.headers.get("x-user")
    return user


def test_httpx_sends_each_keys_requests_to_the_keys_instance(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="consistent_hash")
    with httpx.Client(transport=LoadBalancedTransport(lb, key=by_header), timeout=TIMEOUT) as client:
        for user in range(USERS):
            for _ in range(3):
                client.get(f"http://{lb.service}/u/{user}", headers={"x-user": f"user-{user}"})
    seen = homes(servers)
    assert {path: served for path, served in seen.items()} == {
        f"/u/{user}": {lb.get_server(key=f"user-{user}").id} for user in range(USERS)
    }
    assert len(set().union(*seen.values())) == 3  # and the keys spread over the instances


def test_a_retry_goes_to_the_keys_next_choice(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="consistent_hash")
    owner = lb.get_server(key="user-7")
    dead = next(b for b in servers if b.instance_id == owner.id)
    dead.kill()  # still registered: the first attempt goes there and fails
    with httpx.Client(transport=LoadBalancedTransport(lb, key=by_header), timeout=TIMEOUT) as client:
        response = client.get(f"http://{lb.service}/u/7", headers={"x-user": "user-7"})
    assert response.status_code == 200
    with lb.acquire(key="user-7", exclude=[owner]) as next_choice:
        assert homes(servers)["/u/7"] == {next_choice.id}


def test_async_transport_and_requests_adapter_take_a_key_too(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    servers = backends(3)
    lb = make_lb(servers, strategy="consistent_hash")

    async def send_all() -> None:
        transport = AsyncLoadBalancedTransport(lb, key=by_header)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            for user in range(USERS):
                await client.get(f"http://{lb.service}/a/{user}", headers={"x-user": f"user-{user}"})

    asyncio.run(send_all())
    with requests.Session() as session:
        session.trust_env = False
        zklb.requests.mount(session, lb, key=lambda r: r.headers.get("x-user"))
        for user in range(USERS):
            session.get(f"http://{lb.service}/r/{user}", headers={"x-user": f"user-{user}"}, timeout=TIMEOUT)
    seen = homes(servers)
    for user in range(USERS):
        home = {lb.get_server(key=f"user-{user}").id}
        assert seen[f"/a/{user}"] == seen[f"/r/{user}"] == home
