"""``kazoo_options``: settings for the kazoo client zklb makes from a hosts string, checked up front."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_acl, make_digest_acl

from zklb import ConfigurationError, LoadBalancer, Registry, ServiceWatcher

Factory = Callable[..., Any]
FACTORIES: list[Factory] = [
    lambda client, **kw: LoadBalancer(client, "svc", **kw),
    Registry,
    lambda client, **kw: ServiceWatcher(client, "svc", **kw),
]
IDS = ["LoadBalancer", "Registry", "ServiceWatcher"]


@pytest.mark.parametrize("make", FACTORIES, ids=IDS)
def test_options_with_a_client_of_your_own_are_refused(make: Factory) -> None:
    client = KazooClient(hosts="127.0.0.1:1")  # never started: construction alone must refuse
    with pytest.raises(ConfigurationError, match=r"give those options to KazooClient\(\.\.\.\)"):
        make(client, kazoo_options={"use_ssl": True})


@pytest.mark.parametrize("make", FACTORIES, ids=IDS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hosts": "10.0.0.1:2181"}, "hosts string"),
        ({"timeout": 3.0}, "session_timeout="),
        ({"handler": object()}, "threading handler"),
        ({"use_tls": True}, "'use_tls' is not a KazooClient argument"),
    ],
)
def test_options_zklb_sets_or_kazoo_lacks_are_refused(
    make: Factory, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make("127.0.0.1:1", kazoo_options=options)


def test_options_reach_the_client_each_class_makes(zk: KazooClient, zk_hosts: str, service: str) -> None:
    # A service only the digest identity "reader" may read: without auth_data in kazoo_options, a
    # balancer could not list it, so balancing it proves the options reached the client.
    reader = make_digest_acl("reader", "s3cret", read=True)
    admin = make_acl("world", "anyone", all=True)  # the test's own client writes and cleans up
    zk.ensure_path("/services")
    zk.create(f"/services/{service}", acl=[reader, make_acl("world", "anyone", create=True, delete=True)])
    zk.create(f"/services/{service}/a", b"not a Curator instance", acl=[admin])
    with pytest.raises(NoAuthError):
        zk.get_children(f"/services/{service}")

    options = {"auth_data": [("digest", "reader:s3cret")], "connection_retry": {"max_tries": -1}}
    with (
        Registry(zk_hosts, kazoo_options=options) as registry,
        LoadBalancer(zk_hosts, service, kazoo_options=options) as lb,
        ServiceWatcher(zk_hosts, service, kazoo_options=options) as watcher,
    ):
        registry.register(service, "http://10.0.0.7:8080", id="b")
        lb.start()
        watcher.start()
        assert watcher.wait_for(lambda m: len(m) == 1, timeout=10)  # "a" is skipped
        assert lb.wait_for(lambda m: len(m) == 1, timeout=10)
        assert lb.get_server().url == "http://10.0.0.7:8080"
