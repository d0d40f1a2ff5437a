"""Proxies: balanced traffic goes through a proxy exactly when a plain client would send the request to
the instance's URL through it. A real forwarding proxy on 127.0.0.1 records what passes through it.

The yardstick in every case is the plain client, same settings, asked for the instance's URL directly:
the balanced request must take the same path (through the proxy, to the same target, or not at all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import pytest
import requests

import zklb.requests
from zklb.balancer import LoadBalancer
from zklb.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from zklb.requests import LoadBalancedAdapter

if TYPE_CHECKING:
    from tests.transports.conftest import MakeBalancer, Proxy, StartBackends

TIMEOUT = 10.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD")
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens; a request through it would fail

SetEnv = Callable[[Mapping[str, str]], None]


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """``proxy_env({...})``: exactly these proxy variables in the environment (the test's own only)."""

    def set_env(values: Mapping[str, str]) -> None:
        for name in PROXY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.upper(), raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    set_env({})
    return set_env


def via(proxy: Proxy, send: Callable[[], object]) -> list[str]:
    """The targets ``send()`` asked the proxy for (empty: it went direct)."""
    before = len(proxy.seen)
    response = send()
    status = response.status_code  # type: ignore[attr-defined]
    assert status == 200, status
    return [p.target for p in proxy.seen[before:]]


# -- requests --------------------------------------------------------------------------------------


def by_hand(lb: LoadBalancer, trust_env: bool) -> requests.Session:
    s = requests.Session()
    s.trust_env = trust_env
    s.mount(f"http://{lb.service}/", LoadBalancedAdapter(lb))
    return s


def mounted(lb: LoadBalancer, trust_env: bool) -> requests.Session:
    s = requests.Session()
    s.trust_env = trust_env
    zklb.requests.mount(s, lb)
    return s


@dataclass(frozen=True)
class Case:
    env: dict[str, str]
    trust_env: bool = True
    explicit: dict[str, str] = field(default_factory=dict)  # proxies= of the call
    on_session: dict[str, str] = field(default_factory=dict)  # session.proxies
    # Mounted by hand, the adapter cannot see the session (its trust_env and proxies): where that
    # matters it goes direct rather than through a proxy the session may not want (docs/requests.md).
    by_hand_goes_direct: bool = False


CASES = {
    "no_proxy names the instance": Case({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1,localhost"}),
    "lowercase, all_proxy": Case({"all_proxy": "{proxy}", "no_proxy": "localhost,127.0.0.1"}),
    "cidr": Case({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.0/8"}),
    "no exemption": Case({"HTTP_PROXY": "{proxy}"}),
    "trust_env off": Case({"HTTP_PROXY": "{proxy}"}, trust_env=False),
    "explicit proxy wins over no_proxy": Case(
        {"HTTP_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1"}, explicit={"http": "{proxy}"}
    ),
    "session proxy under an exempt environment one": Case(
        {"HTTP_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1"},
        on_session={"http": "{proxy}"},
        by_hand_goes_direct=True,
    ),
    "no_proxy names the service": Case(
        {"HTTP_PROXY": "{proxy}", "NO_PROXY": "{service}"}, by_hand_goes_direct=True
    ),
}


@pytest.mark.parametrize("make_session", [by_hand, mounted], ids=["by hand", "mount()"])
@pytest.mark.parametrize("name", list(CASES))
def test_requests_uses_a_proxy_exactly_when_plain_requests_would(  # noqa: PLR0917 - fixtures
    backends: StartBackends,
    make_lb: MakeBalancer,
    proxy: Proxy,
    proxy_env: SetEnv,
    name: str,
    make_session: Callable[[LoadBalancer, bool], requests.Session],
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    case = CASES[name]

    def fill(values: Mapping[str, str]) -> dict[str, str]:
        return {k: v.format(proxy=proxy.url, service=lb.service) for k, v in values.items()}

    proxy_env(fill(case.env))
    proxies = fill(case.explicit)
    with requests.Session() as plain:
        plain.trust_env = case.trust_env
        plain.proxies.update(fill(case.on_session))
        expected = via(proxy, lambda: plain.get(f"{server.url}/x", proxies=proxies, timeout=TIMEOUT))
    with make_session(lb, case.trust_env) as s:
        s.proxies.update(fill(case.on_session))
        got = via(
            proxy,
            lambda: s.get(
                f"http://{lb.service}/x", proxies=proxies, auth=("user", "secret"), timeout=TIMEOUT
            ),
        )
    if case.by_hand_goes_direct and make_session is by_hand:
        assert (expected, got) == ([f"{server.url}/x"], [])
        return
    assert got == expected, f"plain requests: {expected}, through zklb: {got}"
    assert server.count == 2


def test_requests_no_secret_reaches_a_proxy_no_proxy_exempts(
    backends: StartBackends, make_lb: MakeBalancer, proxy: Proxy, proxy_env: SetEnv
) -> None:
    # The case of the issue: the logical name is not in NO_PROXY, the instances are; before the fix the
    # adapter reused requests' choice for http://api/ and sent the Authorization header to the proxy.
    servers = backends(2)
    lb = make_lb(servers)
    proxy_env({"HTTP_PROXY": proxy.url.replace("://", "://proxyuser:proxypw@"), "NO_PROXY": "127.0.0.1"})
    with mounted(lb, True) as s:
        answer = s.get(f"http://{lb.service}/redirect/relative", auth=("user", "secret"), timeout=TIMEOUT)
    assert answer.status_code == 200
    assert proxy.seen == []
    assert servers.counts() == [1, 1]  # the redirect went through the balancer too, also direct
    assert answer.json()["headers"].get("Authorization", "").startswith("Basic ")
    # requests adds Proxy-Authorization when it rebuilds the proxies for a redirect to http://api/...;
    # the instance, reached directly, must not get the proxy's password.
    assert "Proxy-Authorization" not in answer.json()["headers"]


# -- httpx -----------------------------------------------------------------------------------------


def test_httpx_transports_ignore_environment_proxies_as_httpx_does(
    backends: StartBackends, make_lb: MakeBalancer, proxy: Proxy, proxy_env: SetEnv
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    proxy_env({"HTTP_PROXY": proxy.url, "ALL_PROXY": proxy.url})
    with httpx.Client(timeout=TIMEOUT) as plain:  # no transport given: httpx uses the environment's
        assert via(proxy, lambda: plain.get(f"{server.url}/x")) == [f"{server.url}/x"]
    with httpx.Client(transport=httpx.HTTPTransport(), timeout=TIMEOUT) as plain:  # a transport given
        assert via(proxy, lambda: plain.get(f"{server.url}/x")) == []
    with httpx.Client(transport=LoadBalancedTransport(lb), timeout=TIMEOUT) as balanced:
        assert via(proxy, lambda: balanced.get(f"http://{lb.service}/x")) == []
        assert via(proxy, lambda: balanced.get(f"{server.url}/x")) == []  # a host passed through

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb), timeout=TIMEOUT) as balanced:
            response = await balanced.get(f"http://{lb.service}/x")
            assert response.status_code == 200

    asyncio.run(main())
    assert proxy.seen[1:] == []
    assert server.count == 5


def test_httpx_proxy_on_the_inner_transport_sees_the_instance(
    backends: StartBackends, make_lb: MakeBalancer, proxy: Proxy, proxy_env: SetEnv
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with httpx.Client(transport=httpx.HTTPTransport(proxy=proxy.url), timeout=TIMEOUT) as plain:
        expected = via(proxy, lambda: plain.get(f"{server.url}/x"))
    inner = httpx.HTTPTransport(proxy=proxy.url)
    with httpx.Client(transport=LoadBalancedTransport(lb, transport=inner), timeout=TIMEOUT) as balanced:
        got = via(proxy, lambda: balanced.get(f"http://{lb.service}/x"))
    assert got == expected == [f"{server.url}/x"]

    async def main() -> list[str]:
        inner = httpx.AsyncHTTPTransport(proxy=proxy.url)
        transport = AsyncLoadBalancedTransport(lb, transport=inner)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as balanced:
            before = len(proxy.seen)
            assert (await balanced.get(f"http://{lb.service}/x")).status_code == 200
            return [p.target for p in proxy.seen[before:]]

    assert asyncio.run(main()) == expected


def test_httpx_client_proxy_bypasses_the_balancing_transport(
    backends: StartBackends, make_lb: MakeBalancer, proxy: Proxy, proxy_env: SetEnv
) -> None:
    # What docs/httpx.md warns about: httpx mounts a proxy given to the client over every URL, ahead of
    # the transport, so the proxy is asked for the logical name, which it cannot resolve.
    (server,) = backends(1)
    lb = make_lb([server])
    with httpx.Client(transport=LoadBalancedTransport(lb), proxy=proxy.url, timeout=TIMEOUT) as c:
        assert c.get(f"http://{lb.service}/x").status_code == 502
    assert [p.target for p in proxy.seen] == [f"http://{lb.service}/x"]
    assert server.count == 0
