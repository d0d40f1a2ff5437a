"""A chroot in the hosts string ("h1:2181,h2:2181/apps/prod"): every class works inside it, and a chroot
that does not exist is refused to writers and waited for by readers."""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient

from zklb import LoadBalancer, Registry, RegistryError, ServiceWatcher

# kazoo warns (UserWarning) when a client starts in a chroot that does not exist yet.
MISSING_CHROOT_WARNING = "ignore:No chroot path exists:UserWarning"


def test_registered_in_a_chroot_seen_at_the_full_path_and_balanced_inside_it(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    chroot = f"/chroot-{service}/prod"
    zk.ensure_path(chroot)
    inside = zk_hosts + chroot
    with (
        Registry(inside) as registry,
        LoadBalancer(inside, service, empty_grace=0) as lb,
        ServiceWatcher(inside, service) as watcher,
    ):
        reg = registry.register(service, "http://10.0.0.1:8080", id="a")
        assert reg.path == f"/services/{service}/a"  # paths are the chroot's, as for every client in it
        zk.sync(f"{chroot}/services/{service}")
        assert zk.get_children(f"{chroot}/services/{service}") == ["a"]
        assert zk.exists(f"/services/{service}") is None  # nothing outside the chroot

        assert lb.wait_for(lambda m: len(m) == 1, timeout=10)
        assert lb.get_server().url == "http://10.0.0.1:8080"
        assert watcher.wait_for(lambda m: len(m) == 1, timeout=10)
        reg.close()
        assert lb.wait_for(lambda m: len(m) == 0, timeout=10)


@pytest.mark.filterwarnings(MISSING_CHROOT_WARNING)
@pytest.mark.parametrize("depth", ["one", "two"])
def test_a_missing_chroot_is_refused_to_a_writer_and_nothing_is_created(
    zk: KazooClient, zk_hosts: str, service: str, depth: str
) -> None:
    # kazoo's makepath would create a missing chroot of one level (with whatever ACL) and loop on one
    # of two: zklb refuses both alike, at once.
    chroot = f"/missing-{service}" + ("/prod" if depth == "two" else "")
    with Registry(zk_hosts + chroot) as registry:
        with pytest.raises(
            RegistryError, match=f"the chroot {chroot} does not exist.*create it first"
        ) as err:
            registry.register(service, "http://10.0.0.1:8080")
        assert "within" not in str(err.value)  # refused, not timed out
    zk.sync("/")
    assert zk.exists(f"/missing-{service}") is None


@pytest.mark.filterwarnings(MISSING_CHROOT_WARNING)
def test_a_reader_in_a_missing_chroot_starts_empty_and_fills_when_it_appears(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    chroot = f"/later-{service}"
    with LoadBalancer(zk_hosts + chroot, service) as lb:
        lb.start()
        assert lb.servers() == ()
        zk.ensure_path(chroot)
        with Registry(zk_hosts + chroot) as registry:
            registry.register(service, "http://10.0.0.2:8080")
            assert lb.wait_for(lambda m: len(m) == 1, timeout=10)
            assert lb.get_server().url == "http://10.0.0.2:8080"
