"""Registry against a real ZooKeeper ensemble: create, update, delete, and survive session expiry."""

from __future__ import annotations

import json

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import ZnodeStat

from zklb import InvalidInstance, Registry, RegistryError, ServiceWatcher
from zklb.testing import expire_session, wait_until


# Each client may talk to a different ensemble member, and a follower can lag the leader: sync first so
# that what this client reads includes every write another client already saw acknowledged.
def synced_get(zk: KazooClient, path: str) -> tuple[bytes, ZnodeStat]:
    zk.sync(path)
    data, stat = zk.get(path)
    return data, stat


def synced_exists(zk: KazooClient, path: str) -> ZnodeStat | None:
    zk.sync(path)
    stat: ZnodeStat | None = zk.exists(path)
    return stat


def synced_children(zk: KazooClient, path: str) -> list[str]:
    zk.sync(path)
    children: list[str] = zk.get_children(path)
    return children


def test_registration_is_seen_by_another_client(zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as registry, ServiceWatcher(zk_hosts, service) as watcher:
        reg = registry.register(service, "http://10.0.0.2:8080", weight=3, metadata={"zone": "a"})
        assert watcher.wait_for(lambda m: len(m) == 1, timeout=10)
        (inst,) = watcher.membership.instances
        assert inst == reg.instance
        assert (inst.url, inst.weight, inst.zone) == ("http://10.0.0.2:8080", 3, "a")


def test_znode_is_ephemeral_under_root_service_id(zk: KazooClient, zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as registry:
        reg = registry.register(service, "http://10.0.0.3:81", id="fixed-id")
        assert reg.path == f"/services/{service}/fixed-id"
        data, stat = synced_get(zk, reg.path)
        assert stat.ephemeralOwner != 0
        assert json.loads(data)["address"] == "10.0.0.3"


def test_update_rewrites_the_same_znode(zk: KazooClient, zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as registry, ServiceWatcher(zk_hosts, service) as watcher:
        reg = registry.register(service, "http://10.0.0.2:8080", weight=3)
        _, before = synced_get(zk, reg.path)
        reg.update(weight=5, metadata={"zone": "b"})
        data, after = synced_get(zk, reg.path)
        assert after.czxid == before.czxid  # same znode, not re-created
        assert after.version == before.version + 1
        assert json.loads(data)["payload"]["metadata"] == {"zone": "b", "weight": "5"}
        assert watcher.wait_for(lambda m: len(m) == 1 and m.instances[0].weight == 5, timeout=10)


def test_close_deletes_the_znode(zk: KazooClient, zk_hosts: str, service: str) -> None:
    registry = Registry(zk_hosts)
    reg = registry.register(service, "http://10.0.0.2:8080")
    other = registry.register(service, "http://10.0.0.3:8080")
    reg.close()
    assert synced_exists(zk, reg.path) is None
    assert synced_exists(zk, other.path) is not None
    registry.close()
    assert synced_exists(zk, other.path) is None


def test_ephemeral_node_goes_when_the_registering_client_closes(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=10)
    registry = Registry(client)  # borrowed client: the registry must not stop it
    reg = registry.register(service, "http://10.0.0.2:8080")
    assert synced_exists(zk, reg.path) is not None
    client.stop()
    client.close()
    assert synced_exists(zk, reg.path) is None


def test_a_borrowed_client_is_not_stopped(zk: KazooClient, service: str) -> None:
    registry = Registry(zk)
    registry.register(service, "http://10.0.0.2:8080")
    registry.close()
    assert zk.connected


def test_bad_input_raises_and_writes_nothing(zk: KazooClient, zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as registry:
        for url, weight in [("http://h:0", 1), ("ftp://h:1", 1), ("http://h:1", 0), ("http://h:1", "nan")]:
            with pytest.raises(InvalidInstance):
                registry.register(service, url, weight=weight)  # type: ignore[arg-type]
        reg = registry.register(service, "http://h:1")
        with pytest.raises(InvalidInstance, match="weight"):
            reg.update(weight=-1)
        assert reg.instance.weight == 1
    assert (
        synced_exists(zk, f"/services/{service}") is None or synced_children(zk, f"/services/{service}") == []
    )


def test_duplicate_id_from_another_session_is_refused(zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as first, Registry(zk_hosts) as second:
        first.register(service, "http://h:1", id="same")
        with pytest.raises(RegistryError, match="another ZooKeeper session"):
            second.register(service, "http://h:2", id="same", timeout=2)


def test_registration_comes_back_after_session_expiry_with_latest_data(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    client = KazooClient(hosts=zk_hosts, timeout=4.0)
    client.start(timeout=10)
    try:
        registry = Registry(client)
        reg = registry.register(service, "http://10.0.0.9:8080", weight=2)
        reg.update(weight=7)
        old_session = client.client_id[0]
        expire_session(client, zk_hosts)
        wait_until(lambda: client.connected and client.client_id[0] != old_session, 30, "a new session")

        def restored() -> bool:
            stat = synced_exists(zk, reg.path)
            return stat is not None and stat.ephemeralOwner == client.client_id[0]

        wait_until(restored, 30, "the znode re-created by the new session")
        data, _ = synced_get(zk, reg.path)
        assert json.loads(data)["payload"]["metadata"]["weight"] == "7"
        assert synced_children(zk, f"/services/{service}") == [reg.instance.id]  # no duplicate
        registry.close()
        assert synced_exists(zk, reg.path) is None
    finally:
        client.stop()
        client.close()
