"""Registry ACLs against the real ensemble: who may read, change and delete a registration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, Id, Permissions, make_acl, make_digest_acl

from zklb import ConfigurationError, LoadBalancer, Registry, RegistryError
from zklb.testing import expire_session, wait_until

ALICE = ("digest", "alice:alice-secret")
WORLD_READ = make_acl("world", "anyone", read=True)
ALICE_ALL = make_digest_acl("alice", "alice-secret", all=True)


@pytest.fixture
def root(service: str) -> str:
    """A root of the test's own: a registry with auth creates missing parents, the root included, with
    its ACL, and other tests of the session must still be able to add services under ``/services``."""
    return f"/secured-{service}"


@pytest.fixture
def bob(zk_hosts: str) -> Iterator[KazooClient]:
    """A client authenticated as another digest identity."""
    client = KazooClient(hosts=zk_hosts, auth_data=[("digest", "bob:bob-secret")])
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def acls(zk: KazooClient, path: str) -> list[ACL]:
    zk.sync(path)
    found, _ = zk.get_acls(path)
    return list(found)


def seen_by_others(acl: list[ACL]) -> list[ACL]:
    """``acl`` as a client without ADMIN on the znode reads it: ZooKeeper hides digest hashes as "x"."""
    return [
        ACL(e.perms, Id("digest", e.id.id.split(":")[0] + ":x")) if e.id.scheme == "digest" else e
        for e in acl
    ]


def test_only_the_identity_may_change_or_delete_and_anyone_may_read(
    zk: KazooClient, bob: KazooClient, zk_hosts: str, service: str, root: str
) -> None:
    with (
        Registry(zk_hosts, root=root, auth=ALICE) as registry,
        LoadBalancer(zk_hosts, service, root=root) as reader,
    ):
        assert registry.acl == (WORLD_READ, ALICE_ALL)
        reg = registry.register(service, "http://10.0.0.2:8080")
        assert acls(zk, reg.path) == seen_by_others([WORLD_READ, ALICE_ALL])
        for parent in (root, f"{root}/{service}"):  # the parents it created
            assert acls(zk, parent) == seen_by_others([WORLD_READ, ALICE_ALL])

        for other in (zk, bob):  # anonymous, and another identity
            with pytest.raises(NoAuthError):
                other.set(reg.path, b"{}")
            with pytest.raises(NoAuthError):
                other.delete(reg.path)
            with pytest.raises(NoAuthError):  # nor forge a sibling
                other.create(f"{root}/{service}/forged", b"{}")
            with pytest.raises(NoAuthError):
                other.set_acls(reg.path, [make_acl("world", "anyone", all=True)])

        # A reader without credentials still balances.
        assert reader.wait_for(lambda m: len(m) == 1, timeout=10)
        assert reader.get_server().url == "http://10.0.0.2:8080"
        # The registry itself still updates and deletes.
        assert reg.update(weight=4)
        reg.close()
        zk.sync(reg.path)
        assert zk.exists(reg.path) is None


def test_session_expiry_recreates_with_the_same_acl(
    zk: KazooClient, zk_hosts: str, service: str, root: str
) -> None:
    client = KazooClient(hosts=zk_hosts, timeout=4.0, auth_data=[ALICE])
    client.start(timeout=10)
    try:
        with Registry(client, root=root, auth=ALICE) as registry:
            reg = registry.register(service, "http://10.0.0.3:8080")
            old_session = client.client_id[0]
            expire_session(client, zk_hosts)

            def recreated() -> bool:
                zk.sync(reg.path)
                stat = zk.exists(reg.path)
                return stat is not None and stat.ephemeralOwner not in (0, old_session)

            wait_until(recreated, 30, "the registration re-created by the new session")
            assert acls(zk, reg.path) == seen_by_others([WORLD_READ, ALICE_ALL])
            with pytest.raises(NoAuthError):
                zk.delete(reg.path)
    finally:
        client.stop()
        client.close()


def test_an_existing_parent_open_to_anyone_is_refused_until_tightened(
    zk: KazooClient, zk_hosts: str, service: str, root: str
) -> None:
    parent = f"{root}/{service}"
    zk.ensure_path(parent)  # made open by an earlier run without auth, or by another tool
    with Registry(zk_hosts, root=root, auth=ALICE) as registry:
        with pytest.raises(RegistryError, match=r"lets anyone create and delete its children.*setAcl") as err:
            registry.register(service, "http://10.0.0.4:8080", id="a")
        assert "within" not in str(err.value)  # refused at once, not timed out
        zk.sync(parent)
        assert zk.get_children(parent) == []

        zk.set_acls(parent, list(registry.acl or ()))  # the fix the message names
        reg = registry.register(service, "http://10.0.0.4:8080", id="a")
        assert acls(zk, reg.path) == seen_by_others([WORLD_READ, ALICE_ALL])


def test_a_parent_this_identity_may_not_create_in_is_refused(
    bob: KazooClient, zk_hosts: str, service: str, root: str
) -> None:
    bob.ensure_path(root)
    bob.create(f"{root}/{service}", acl=[WORLD_READ, make_digest_acl("bob", "bob-secret", all=True)])
    with (
        Registry(zk_hosts, root=root, auth=ALICE) as registry,
        pytest.raises(RegistryError, match=r"refused to create .* \(NoAuthError\)"),
    ):
        registry.register(service, "http://10.0.0.5:8080")


def test_acl_chooses_another_and_auth_names_the_session_identities(
    zk: KazooClient, zk_hosts: str, service: str, root: str
) -> None:
    # ZooKeeper's "auth" id means "whoever created it", as the server knows the session: the ACL auth=
    # gives for schemes other than digest (sasl); shown here with a digest identity from kazoo_options.
    creator = ACL(Permissions.ALL, Id("auth", ""))
    options = {"auth_data": [("digest", "carol:carol-secret")]}
    with Registry(zk_hosts, root=root, kazoo_options=options, acl=[WORLD_READ, creator]) as registry:
        reg = registry.register(service, "http://10.0.0.6:8080")
        assert acls(zk, reg.path) == seen_by_others(
            [WORLD_READ, make_digest_acl("carol", "carol-secret", all=True)]
        )


def test_auth_must_already_be_on_a_client_of_your_own(zk: KazooClient) -> None:
    with pytest.raises(ConfigurationError, match=r"KazooClient\(auth_data=\[auth\]\)"):
        Registry(zk, auth=ALICE)
    with pytest.raises(ConfigurationError, match="user:password"):
        Registry("127.0.0.1:1", auth=("digest", "no-colon"))
    with pytest.raises(ConfigurationError, match="ACL"):
        Registry("127.0.0.1:1", acl=[])
