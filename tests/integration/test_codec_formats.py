"""Each registry format read from znodes written by ZooKeeper's own zkCli, and written by zklb's Registry.

The fixtures are shaped as the Java systems document them: Spring Cloud Zookeeper's registration (Curator
x-discovery with a ``ZookeeperInstance`` payload), Aurora's ServerSet members, Dubbo 2's provider URLs.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from kazoo.client import KazooClient
from tests.integration.zkcli import ZkCliSession

from zklb import LoadBalancer, Membership, Registry, ServerSetCodec, ServiceWatcher
from zklb.slow_start import SlowStart
from zklb.testing import expire_session, wait_until

WAIT = 15.0

MakeCli = Callable[[], ZkCliSession]


@pytest.fixture
def zkcli(zk_hosts: str, tmp_path: Path) -> Iterator[MakeCli]:
    """Open zkCli sessions against the test ensemble; all are quit at the end."""
    sessions: list[ZkCliSession] = []

    def make() -> ZkCliSession:
        session = ZkCliSession(zk_hosts, tmp_path / f"zkcli-{len(sessions)}.log")
        sessions.append(session)
        return session

    try:
        yield make
    finally:
        for session in sessions:
            session.close()


def _compact(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _uri_spec(*parts: tuple[str, bool]) -> dict[str, object]:
    return {"parts": [{"value": value, "variable": variable} for value, variable in parts]}


SCHEME_ADDRESS_PORT = _uri_spec(
    ("scheme", True), ("://", False), ("address", True), (":", False), ("port", True)
)


def spring_registration(service: str, instance_id: str, port: int, status: str, **fields: object) -> str:
    """What Spring Cloud Zookeeper registers for an application (its documented shape)."""
    doc = {
        "name": service,
        "id": instance_id,
        "address": "127.0.0.1",
        "port": port,
        "sslPort": None,
        "payload": {
            "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "id": f"{service}:{port}",
            "name": service,
            "metadata": {"instance_status": status},
        },
        "registrationTimeUTC": 1700000000000,
        "serviceType": "DYNAMIC",
        "uriSpec": SCHEME_ADDRESS_PORT,
        **fields,
    }
    return _compact(doc)


# -- Curator / Spring Cloud Zookeeper ----------------------------------------------------------------------


def test_spring_and_curator_znodes_written_by_zkcli(zkcli: MakeCli, zk_hosts: str, service: str) -> None:
    cli = zkcli()
    base = f"/services/{service}"
    cli.create("/services", "")
    cli.create(base, "")
    cli.create(f"{base}/up", spring_registration(service, "up", 8081, "UP"), ephemeral=True)
    cli.create(f"{base}/down", spring_registration(service, "down", 8082, "DOWN"), ephemeral=True)
    cli.create(f"{base}/oos", spring_registration(service, "oos", 8083, "OUT_OF_SERVICE"), ephemeral=True)
    https_spec = _uri_spec(("https://", False), ("address", True), (":", False), ("port", True))
    cli.create(
        f"{base}/tls", spring_registration(service, "tls", 8443, "UP", uriSpec=https_spec), ephemeral=True
    )
    both_spec = _uri_spec(
        ("scheme", True), ("://", False), ("address", True), (":", False), ("ssl-port", True)
    )
    both = spring_registration(service, "both", 8084, "UP", sslPort=8444, uriSpec=both_spec)
    cli.create(f"{base}/both", both, ephemeral=True)

    with LoadBalancer(zk_hosts, service, empty_grace=0) as lb:
        assert lb.wait_for(lambda m: set(m.by_id) == {"up", "oos", "tls", "both"}, WAIT), lb.membership
        by_id = lb.membership.by_id
        assert (by_id["up"].url, by_id["up"].tls_url, by_id["up"].draining) == (
            "http://127.0.0.1:8081",
            None,
            False,
        )
        assert by_id["oos"].draining  # in the pool, counted, never picked while UP ones exist
        assert by_id["tls"].url == "https://127.0.0.1:8443"  # the uriSpec says https: not served as http
        assert (by_id["both"].url, by_id["both"].tls_url) == (
            "http://127.0.0.1:8084",
            "https://127.0.0.1:8444",
        )
        picked = {lb.get_server().id for _ in range(40)}
        assert picked == {"up", "tls", "both"}
        assert lb.pool_stats().draining == 1

        cli.close()  # the session ends: every ephemeral znode it wrote goes
        assert lb.wait_for(lambda m: len(m) == 0, WAIT), lb.membership


# -- Finagle / Aurora ServerSets ---------------------------------------------------------------------------


def member(port: int, status: str = "ALIVE", **additional: int) -> str:
    """An Aurora ServerSet member, as its documentation shows one."""
    doc = {
        "additionalEndpoints": {name: {"host": "127.0.0.1", "port": p} for name, p in additional.items()},
        "serviceEndpoint": {"host": "127.0.0.1", "port": port},
        "shard": 0,
        "status": status,
    }
    return _compact(doc)


def test_serverset_members_written_by_zkcli(zkcli: MakeCli, zk_hosts: str, service: str) -> None:
    cli = zkcli()
    base = f"/aurora/{service}"
    cli.create("/aurora", "")
    cli.create(base, "")
    alive = cli.create(f"{base}/member_", member(9001, http=9101), ephemeral=True, sequential=True)
    tls = cli.create(f"{base}/member_", member(9002, http=9102, https=9202), ephemeral=True, sequential=True)
    cli.create(f"{base}/member_", member(9003, "DEAD", http=9103), ephemeral=True, sequential=True)
    names = {alive.rsplit("/", 1)[1], tls.rsplit("/", 1)[1]}
    assert all(name.startswith("member_") and name[7:].isdigit() for name in names)

    with LoadBalancer(zk_hosts, service, root="/aurora", codec="serverset", empty_grace=0) as lb:
        assert lb.wait_for(lambda m: set(m.by_id) == names, WAIT), lb.membership
        assert sorted(i.url for i in lb.servers()) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
        assert lb.membership.by_id[tls.rsplit("/", 1)[1]].tls_url == "https://127.0.0.1:9202"
    http = ServerSetCodec(endpoint="http")
    with ServiceWatcher(zk_hosts, service, root="/aurora", codec=http) as watcher:
        assert watcher.wait_for(lambda m: len(m) == 2, WAIT), watcher.membership
        assert sorted(i.port for i in watcher.membership) == [9101, 9102]


def test_registry_writes_serverset_members_and_recreates_them_after_expiry(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    client = KazooClient(hosts=zk_hosts, timeout=4.0)
    client.start(timeout=10)
    base = f"/aurora/{service}"
    try:
        registry = Registry(client, root="/aurora", codec="serverset")
        reg = registry.register(service, "http://127.0.0.1:9001", ssl_port=9443, metadata={"shard": "4"})
        first = reg.path
        assert first.startswith(f"{base}/member_") and reg.instance.id == first.rsplit("/", 1)[1]
        zk.sync(base)
        data, stat = zk.get(first)
        assert json.loads(data) == {
            "serviceEndpoint": {"host": "127.0.0.1", "port": 9001},
            "additionalEndpoints": {
                "http": {"host": "127.0.0.1", "port": 9001},
                "https": {"host": "127.0.0.1", "port": 9443},
            },
            "status": "ALIVE",
            "shard": 4,
        }
        assert stat.ephemeralOwner == client.client_id[0]

        with LoadBalancer(zk_hosts, service, root="/aurora", codec="serverset") as lb:
            assert lb.wait_for(lambda m: reg.instance.id in m.by_id, WAIT), lb.membership
            old_session = client.client_id[0]
            expire_session(client, zk_hosts)
            wait_until(lambda: client.connected and client.client_id[0] != old_session, 30, "a new session")
            wait_until(lambda: reg.path != first and reg.confirmed(), 30, "the member re-created")
            zk.sync(base)
            assert zk.get_children(base) == [reg.path.rsplit("/", 1)[1]]  # one member: no ghost, no duplicate
            assert zk.exists(reg.path).ephemeralOwner == client.client_id[0]
            assert lb.wait_for(lambda m: set(m.by_id) == {reg.instance.id}, WAIT), lb.membership

            reg.close()
            zk.sync(base)
            assert zk.get_children(base) == []
        registry.close()
    finally:
        client.stop()
        client.close()


def test_balancer_add_server_with_the_serverset_codec(zk_hosts: str, service: str) -> None:
    with LoadBalancer(zk_hosts, service, root="/aurora", codec="serverset") as lb:
        reg = lb.add_server("http://127.0.0.1:9005")
        assert reg.instance.id.startswith("member_")
        assert lb.get_server().url == "http://127.0.0.1:9005"
        assert lb.remove_server(reg)
        assert len(lb.membership) == 0


# -- Dubbo 2 -----------------------------------------------------------------------------------------------


def provider_url(interface: str, port: int, extra: str = "") -> str:
    """A Dubbo 2 provider URL, as Dubbo's ZooKeeper registry documentation shows one."""
    return (
        f"dubbo://127.0.0.1:{port}/{interface}?anyhost=true&application=demo-provider&dubbo=2.0.2"
        f"&interface={interface}&methods=sayHello&side=provider&timestamp=1700000000000{extra}"
    )


def test_dubbo_providers_written_by_zkcli(zkcli: MakeCli, zk_hosts: str) -> None:
    interface = f"com.foo.DemoService{uuid.uuid4().hex[:8]}"
    base = f"/dubbo/{interface}"
    cli = zkcli()
    cli.create("/dubbo", "")
    cli.create(base, "")
    for category in ("providers", "consumers", "configurators", "routers"):
        cli.create(f"{base}/{category}", "")

    def provider(port: int, extra: str = "") -> None:
        name = quote_plus(provider_url(interface, port, extra), safe="")
        cli.create(f"{base}/providers/{name}", "127.0.0.1", ephemeral=True)

    provider(20880, "&weight=200&warmup=60000")
    provider(20881)
    provider(20882, "&disabled=true")
    provider(20883, "&enabled=false")
    consumer = f"consumer://127.0.0.1/{interface}?application=demo-consumer&category=consumers&side=consumer"
    cli.create(f"{base}/consumers/{quote_plus(consumer, safe='')}", "", ephemeral=True)
    override = f"override://0.0.0.0/{interface}?category=configurators&weight=1"
    cli.create(f"{base}/configurators/{quote_plus(override, safe='')}", "")

    with LoadBalancer(
        zk_hosts, interface, root="/dubbo", codec="dubbo", strategy="weighted_round_robin"
    ) as lb:
        assert lb.wait_for(lambda m: len(m) == 2, WAIT), lb.membership
        weights = {i.port: (i.weight, i.metadata["warmup"]) for i in lb.servers()}
        assert weights == {20880: (200, "60000"), 20881: (100, "600000")}
        assert all(i.registered_at is not None and i.registered_at.year == 2023 for i in lb.servers())
        picks = [lb.get_server().port for _ in range(300)]
        assert picks.count(20880) == 200 and picks.count(20881) == 100


def test_registry_writes_dubbo_providers(zk: KazooClient, zk_hosts: str) -> None:
    interface = f"com.foo.Written{uuid.uuid4().hex[:8]}"
    with Registry(zk_hosts, root="/dubbo", codec="dubbo") as registry:
        reg = registry.register(interface, "http://127.0.0.1:8080", weight=30)
        zk.sync(f"/dubbo/{interface}/providers")
        (name,) = zk.get_children(f"/dubbo/{interface}/providers")
        assert reg.path == f"/dubbo/{interface}/providers/{name}"
        assert zk.get(reg.path)[0] == b"127.0.0.1"
        url = provider = name
        assert provider.startswith("http%3A%2F%2F127.0.0.1%3A8080%2F")
        assert "weight%3D30" in url and "side%3Dprovider" in url
        with LoadBalancer(zk_hosts, interface, root="/dubbo", codec="dubbo") as lb:
            assert lb.wait_for(lambda m: reg.instance.id in m.by_id, WAIT), lb.membership
            assert (lb.get_server().url, lb.get_server().weight) == ("http://127.0.0.1:8080", 30)


def test_dubbo_warmup_ramps_a_fresh_provider_up_as_dubbo_does(zk: KazooClient, zk_hosts: str) -> None:
    interface = f"com.foo.Warm{uuid.uuid4().hex[:8]}"
    providers = f"/dubbo/{interface}/providers"
    now_ms = int(time.time() * 1000)
    old = provider_url(interface, 20890)  # timestamp 2023: long warm
    fresh = provider_url(interface, 20891).replace("timestamp=1700000000000", f"timestamp={now_ms}")
    for url in (old, fresh + "&warmup=600000"):
        zk.create(f"{providers}/{quote_plus(url, safe='')}", b"127.0.0.1", ephemeral=True, makepath=True)
    with LoadBalancer(
        zk_hosts, interface, root="/dubbo", codec="dubbo", strategy="weighted_round_robin"
    ) as lb:
        assert lb.wait_for(lambda m: len(m) == 2, WAIT), lb.membership
        picks = [lb.get_server().port for _ in range(2000)]
    # Equal weights, but the fresh provider is seconds into a 10-minute warm-up: about 1 % of its share.
    assert picks.count(20891) < 60, picks.count(20891)
    with LoadBalancer(
        zk_hosts, interface, root="/dubbo", codec="dubbo", slow_start=SlowStart(window=0.001)
    ) as lb:
        assert lb.wait_for(lambda m: len(m) == 2, WAIT), lb.membership
        picks = [lb.get_server().port for _ in range(1000)]
    # Its own window (the URL's warmup) wins over the balancer's: still ramping, at SlowStart's default
    # floor of 10 %, so about 9 % of the picks (91 expected; 500 without a ramp).
    assert picks.count(20891) < 200, picks.count(20891)


def _has(name: str, membership: Membership) -> bool:
    return name in membership


def test_a_rejected_znode_is_logged_once_per_reason(
    zk: KazooClient, zk_hosts: str, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/services/{service}/down"
    zk.create(path, spring_registration(service, "down", 8082, "DOWN").encode(), makepath=True)
    with caplog.at_level(logging.INFO, logger="zklb.discovery"), ServiceWatcher(zk_hosts, service) as watcher:
        for port in (8083, 8084):  # the data changes (re-read, re-decoded), the reason does not
            zk.set(path, spring_registration(service, "down", port, "DOWN").encode())
            zk.create(f"{path}-{port}", spring_registration(service, "x", port, "UP").encode())
            assert watcher.wait_for(functools.partial(_has, f"down-{port}"), WAIT), watcher.membership
        zk.set(path, b"{not json")
        zk.create(f"{path}-last", spring_registration(service, "x", 8085, "UP").encode())
        assert watcher.wait_for(lambda m: "down-last" in m, WAIT), watcher.membership
    messages = [r.getMessage() for r in caplog.records if "/down:" in r.getMessage()]
    assert len(messages) == 2, messages
    assert "instance_status is 'DOWN', not UP" in messages[0] and "not JSON" in messages[1]
    assert [r.levelno for r in caplog.records if "/down:" in r.getMessage()] == [
        logging.INFO,
        logging.WARNING,
    ]
