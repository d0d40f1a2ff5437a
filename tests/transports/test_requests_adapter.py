"""zklb.requests against real HTTP servers registered in a real ZooKeeper, with a real requests Session."""

from __future__ import annotations

import base64
import importlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests
from requests.adapters import HTTPAdapter

import zklb.requests
from zklb.balancer import LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.requests import LoadBalancedAdapter, NoServerAvailableError
from zklb.retry import RetryPolicy

if TYPE_CHECKING:
    from tests.transports.conftest import Backend, MakeBalancer, StartBackends

TIMEOUT = 10.0


def session(lb: LoadBalancer, **kwargs: Any) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxy from the environment between us and 127.0.0.1
    s.mount(f"http://{lb.service}/", LoadBalancedAdapter(lb, **kwargs))
    return s


def in_flight(lb: LoadBalancer, backend: Backend) -> int:
    return lb.stats()[backend.instance_id].in_flight


def test_round_robin_spreads_evenly(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(3)
    lb = make_lb(servers)
    with session(lb) as s:
        for i in range(30):
            s.get(f"http://{lb.service}/users/{i}", timeout=TIMEOUT).raise_for_status()
    assert servers.counts() == [10, 10, 10]
    assert all(st.in_flight == 0 for st in lb.stats().values())


def test_url_is_rewritten_on_a_copy(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        prepared = s.prepare_request(
            requests.Request(
                "POST", f"http://{lb.service}/a/b?x=1", data=b"payload", headers={"X-Test": "yes"}
            )
        )
        response = s.send(prepared, timeout=TIMEOUT)
        got = response.json()
    assert prepared.url == f"http://{lb.service}/a/b?x=1"  # the caller's request is untouched
    assert "Host" not in prepared.headers
    assert (got["method"], got["path"], got["body"], got["headers"]["X-Test"]) == (
        "POST",
        "/a/b?x=1",
        "payload",
        "yes",
    )
    assert response.url == f"http://{lb.service}/a/b?x=1"
    assert response.request is prepared


def test_host_header_is_the_backend_by_default(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        assert s.get(f"http://{lb.service}/", timeout=TIMEOUT).json()["host"] == f"127.0.0.1:{server.port}"
    with session(lb, preserve_host=True) as s:
        assert s.get(f"http://{lb.service}/", timeout=TIMEOUT).json()["host"] == lb.service


def test_every_send_argument_is_forwarded(
    backends: StartBackends, make_lb: MakeBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    seen: list[dict[str, Any]] = []
    real_send = HTTPAdapter.send

    def spy(self: HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        seen.append(kwargs)
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", spy)
    with session(lb) as s:
        s.get(f"http://{lb.service}/", timeout=(3.0, 4.0), verify=False, stream=True, proxies={}).close()
    assert seen == [
        {"stream": True, "timeout": (3.0, 4.0), "verify": False, "cert": None, "proxies": {}},
    ]


def test_read_timeout_is_forwarded(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb, retry=None) as s, pytest.raises(requests.ReadTimeout):
        s.get(f"http://{lb.service}/slow", params={"seconds": "1"}, timeout=(5, 0.1))
    assert lb.stats()[server.instance_id].failures == 1


# -- response lifetime -------------------------------------------------------------------------------


def test_stream_holds_the_instance_until_closed(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        response = s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT)
        assert response.raw.read(len(server.STREAM_HEAD)) == server.STREAM_HEAD
        assert in_flight(lb, server) == 1
        response.close()  # before the end of the body
        assert in_flight(lb, server) == 0


def test_stream_is_released_when_read_to_the_end(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        response = s.get(f"http://{lb.service}/stream", stream=True, timeout=TIMEOUT)
        assert in_flight(lb, server) == 1
        server.release.set()
        assert (
            b"".join(response.iter_content(4)) == server.STREAM_HEAD + server.STREAM_TAIL
        )  # no close() call
        assert in_flight(lb, server) == 0
        response.close()
        # a plain get reads the body; HEAD has none: both leave nothing in flight
        assert s.get(f"http://{lb.service}/", timeout=TIMEOUT).status_code == 200
        assert s.head(f"http://{lb.service}/", timeout=TIMEOUT).status_code == 200
        assert in_flight(lb, server) == 0
    stats = lb.stats()[server.instance_id]
    assert (stats.requests, stats.failures) == (3, 0)


def test_5xx_counts_as_a_failure(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        assert s.get(f"http://{lb.service}/status/500", timeout=TIMEOUT).status_code == 500
        # the only server answers 503: no other to retry on, so the 503 comes back as is
        assert s.get(f"http://{lb.service}/status/503", timeout=TIMEOUT).status_code == 503
        assert s.get(f"http://{lb.service}/", timeout=TIMEOUT).status_code == 200
    stats = lb.stats()[server.instance_id]
    assert (stats.requests, stats.failures, stats.in_flight) == (3, 2, 0)


def test_cookies_belong_to_the_logical_host(backends: StartBackends, make_lb: MakeBalancer) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    with session(lb) as s:
        response = s.get(f"http://{lb.service}/cookie", timeout=TIMEOUT)
        assert [c.domain for c in response.cookies] == [f"{lb.service}.local"]
        assert s.cookies.get("visited") == "yes"


# -- redirects ---------------------------------------------------------------------------------------


def test_relative_redirect_goes_through_the_balancer(backends: StartBackends, make_lb: MakeBalancer) -> None:
    servers = backends(2)
    lb = make_lb(servers)
    with session(lb) as s:
        response = s.get(f"http://{lb.service}/redirect/relative", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.url == f"http://{lb.service}/target"
    assert [r.url for r in response.history] == [f"http://{lb.service}/redirect/relative"]
    assert response.json()["path"] == "/target"
    assert servers.counts() == [1, 1]
    assert all(st.in_flight == 0 for st in lb.stats().values())


def test_absolute_redirect_goes_where_it_points(backends: StartBackends, make_lb: MakeBalancer) -> None:
    registered, outside = backends(2)
    lb = make_lb([registered])
    with session(lb) as s:
        response = s.get(
            f"http://{lb.service}/redirect/absolute",
            params={"to": f"{outside.url}/elsewhere"},
            timeout=TIMEOUT,
        )
    assert response.url == f"{outside.url}/elsewhere"
    assert response.json()["backend"] == outside.name
    assert (registered.count, outside.count) == (1, 1)


# -- retries -----------------------------------------------------------------------------------------


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

    policy = RetryPolicy()  # the default policy, shared by every thread's session (see the httpx twin)

    def worker(n: int) -> None:
        nonlocal done
        with session(lb, retry=policy) as s:  # a Session per thread, one policy (and budget) for all
            for _ in range(n):
                if time.monotonic() > deadline:
                    failures.append("timed out")
                    return
                try:
                    status = s.get(f"http://{lb.service}/", timeout=TIMEOUT).status_code
                    if status != 200:
                        failures.append(f"status {status}")
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                with lock:
                    done += 1
                    if done == total // 3:
                        halfway.set()

    threads = [threading.Thread(target=worker, args=(total // workers,)) for _ in range(workers)]
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
            f"\n[requests killed backend] {total} GETs, {len(failures)} failed; served per backend "
            f"{servers.counts()}; failures recorded on the killed one: {stats[victim.instance_id].failures}; "
            f"retries denied by the budget: {policy.budget.denied}"
        )
    assert failures == []
    assert stats[victim.instance_id].failures > 0
    assert stats[victim.instance_id].ejected
    assert all(st.in_flight == 0 for st in stats.values())


def test_post_is_not_retried_by_default(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, alive = one_dead
    errors = 0
    with session(lb) as s:
        for _ in range(4):
            try:
                assert s.post(f"http://{lb.service}/", data=b"x", timeout=TIMEOUT).status_code == 200
            except requests.ConnectionError:
                errors += 1
    assert (errors, alive.count) == (2, 2)


def test_post_is_retried_when_opted_in(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, alive = one_dead
    with session(lb, retry=RetryPolicy(retry_non_idempotent=True)) as s:
        statuses = [s.post(f"http://{lb.service}/", data=b"x", timeout=TIMEOUT).status_code for _ in range(4)]
    assert statuses == [200] * 4
    assert alive.count == 4


def test_streaming_request_body_is_not_retried(one_dead: tuple[LoadBalancer, Backend]) -> None:
    lb, alive = one_dead

    def body() -> Iterator[bytes]:
        yield b"chunk"

    errors = 0
    with session(lb) as s:
        for _ in range(2):
            try:
                s.put(f"http://{lb.service}/", data=body(), timeout=TIMEOUT)
            except requests.ConnectionError:
                errors += 1
    assert (errors, alive.count) == (1, 1)
    assert alive.hits[0].body == b"chunk"


# -- mount(): every URL for the service, everything else as before ---------------------------------------


class Recording(HTTPAdapter):
    """A session's own adapter, as a user may have configured it: records what it sent, and closing."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.closed = False

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(request.url or "")
        return super().send(request, **kwargs)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_mount_balances_the_service_with_credentials_a_port_or_capitals(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    urls = [
        f"http://{lb.service}/a",
        f"http://user:secret@{lb.service}/b",
        f"http://{lb.service}:8080/c",
        f"http://{lb.service.upper()}/d",
    ]
    # The pitfall mount() removes: a prefix mounted by hand does not match a URL with credentials, so
    # requests would send them to whatever DNS says the service name is.
    with requests.Session() as by_hand:
        by_hand.mount(f"http://{lb.service}/", LoadBalancedAdapter(lb))
        assert not isinstance(by_hand.get_adapter(urls[1]), LoadBalancedAdapter)
    with requests.Session() as s:
        s.trust_env = False
        adapter = zklb.requests.mount(s, lb)
        assert all(s.get_adapter(url) is adapter for url in urls)
        answers = [s.get(url, timeout=TIMEOUT).json() for url in urls]
    assert [a["backend"] for a in answers] == [server.name] * 4
    assert [h.path for h in server.hits] == ["/a", "/b", "/c", "/d"]
    assert answers[1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"user:secret").decode()
    assert "Authorization" not in answers[0]["headers"]


def test_mount_sends_other_hosts_through_the_sessions_own_adapters(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    registered, outside = backends(2)
    lb = make_lb([registered])
    own_http, own_https, special = Recording(), Recording(), Recording()
    with requests.Session() as s:
        s.trust_env = False
        s.mount("http://", own_http)
        s.mount("https://", own_https)
        adapter = zklb.requests.mount(s, lb)
        s.mount(f"http://{lb.service}/special/", special)  # a longer prefix still wins, as in requests
        assert s.get_adapter("https://example.org/") is adapter
        assert s.get(f"{outside.url}/x", timeout=TIMEOUT).json()["backend"] == outside.name
        assert s.get(f"http://{lb.service}/y", timeout=TIMEOUT).json()["backend"] == registered.name
        redirected = s.get(
            f"http://{lb.service}/redirect/absolute", params={"to": f"{outside.url}/z"}, timeout=TIMEOUT
        )
        assert redirected.json()["backend"] == outside.name
        assert s.get_adapter(f"http://{lb.service}/special/1") is special
    assert own_http.sent == [f"{outside.url}/x", f"{outside.url}/z"]  # exactly as before mount()
    assert (registered.count, outside.count) == (2, 2)
    assert own_http.closed and own_https.closed  # closing the session closed the adapters mount() took over


def test_mount_several_services(backends: StartBackends, make_lb: MakeBalancer) -> None:
    users_servers = backends(2)
    (orders_server,) = backends(1)
    users = make_lb(users_servers)
    orders = LoadBalancer.static([orders_server.url], service="orders")  # a second service, no registry
    with requests.Session() as s:
        s.trust_env = False
        zklb.requests.mount(s, users, orders)
        for _ in range(4):
            assert s.get(f"http://{users.service}/", timeout=TIMEOUT).status_code == 200
        for _ in range(2):
            assert s.get("http://orders/", timeout=TIMEOUT).json()["backend"] == orders_server.name
    assert (users_servers.counts(), orders_server.count) == ([2, 2], 2)
    with pytest.raises(ValueError, match="two balancers"):
        zklb.requests.mount(requests.Session(), users, LoadBalancer.static([], service=users.service))
    with pytest.raises(ValueError, match="at least one"):
        zklb.requests.mount(requests.Session())
    with pytest.raises(TypeError, match="each balancer's service"):
        zklb.requests.mount(requests.Session(), users, hosts=["other"])


# -- errors ------------------------------------------------------------------------------------------


def test_an_empty_pool_is_a_connection_error_with_the_request(
    backends: StartBackends, make_lb: MakeBalancer
) -> None:
    (server,) = backends(1)
    lb = make_lb([server])
    assert lb.remove_server(server.url)
    url = f"http://{lb.service}/users/1"
    # requests.ConnectionError: what code written for plain requests handles
    with session(lb) as s, pytest.raises(requests.ConnectionError) as raised:
        s.get(url, timeout=TIMEOUT)
    error = raised.value
    assert isinstance(error, NoServerAvailable) and isinstance(error, NoServerAvailableError)
    assert isinstance(error, requests.RequestException)
    assert error.request is not None and error.request.url == url
    assert (error.service, error.response) == (lb.service, None)
    assert server.count == 0


# -- packaging ---------------------------------------------------------------------------------------


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "requests", None)  # what `import requests` meets when not installed
    monkeypatch.delitem(sys.modules, "zklb.requests")
    with pytest.raises(ImportError, match=r"pip install zklb\[requests\]"):
        importlib.import_module("zklb.requests")
