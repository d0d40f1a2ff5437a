"""TLS to ZooKeeper: a TLS-only server (client certificates required), zklb's classes over it, and
the connections it must refuse."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from zklb import LoadBalancer, Registry, RegistryError, ServiceWatcher
from zklb.testing import ZooKeeperEnsemble, four_letter_word

REFUSED_WITHIN = 1.5  # seconds a refused client may try before its start gives up


@pytest.fixture(scope="module")
def tls_zk() -> Iterator[ZooKeeperEnsemble]:
    """One standalone ZooKeeper serving TLS only, with client authentication, for the module."""
    with ZooKeeperEnsemble(size=1, tls=True, tls_client_auth=True) as ens:
        yield ens


def test_registered_and_balanced_over_tls(tls_zk: ZooKeeperEnsemble, service: str) -> None:
    options = tls_zk.kazoo_options
    assert options["use_ssl"] is True and options["verify_certs"] is True and options["check_hostname"]
    with (
        Registry(tls_zk.hosts, kazoo_options=options) as registry,
        LoadBalancer(tls_zk.hosts, service, kazoo_options=options) as lb,
        ServiceWatcher(tls_zk.hosts, service, kazoo_options=options) as watcher,
    ):
        registry.register(service, "http://10.0.0.1:8080")
        registry.register(service, "http://10.0.0.2:8080")
        lb.start()
        assert lb.wait_for(lambda m: len(m) == 2, timeout=10)
        assert {lb.get_server().url for _ in range(4)} == {"http://10.0.0.1:8080", "http://10.0.0.2:8080"}
        assert watcher.wait_for(lambda m: len(m) == 2, timeout=10)
        assert watcher.connection == "connected"


def _refused(hosts: str, **options: Any) -> None:
    client = KazooClient(hosts=hosts, connection_retry={"max_tries": -1, "max_delay": 0.2}, **options)
    try:
        with pytest.raises(KazooTimeoutError):
            client.start(timeout=REFUSED_WITHIN)
    finally:
        client.stop()
        client.close()
        del client
        # kazoo (2.11) drops the socket of a failed TLS handshake without closing it: collect it now,
        # in the test that expects its ResourceWarning, not in whichever test runs next.
        gc.collect()


def test_a_plain_connection_to_the_tls_port_fails(tls_zk: ZooKeeperEnsemble, service: str) -> None:
    _refused(tls_zk.hosts)
    lb = LoadBalancer(tls_zk.hosts, service)  # no kazoo_options: plain
    try:
        with pytest.raises(RegistryError, match="not started within"):
            lb.start(timeout=REFUSED_WITHIN)
    finally:
        lb.close()
    with pytest.raises(OSError):  # the port speaks no plain protocol at all, four-letter words included
        four_letter_word(tls_zk.members[0].client_port, "ruok", timeout=REFUSED_WITHIN)


# kazoo (2.11) drops the socket of a failed TLS handshake without closing it (see _refused).
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_without_a_client_certificate_or_trust_fails(tls_zk: ZooKeeperEnsemble) -> None:
    options = tls_zk.kazoo_options
    _refused(tls_zk.hosts, use_ssl=True, ca=options["ca"])  # no client certificate
    untrusted = {k: v for k, v in options.items() if k != "ca"}  # the system CAs do not know the server
    _refused(tls_zk.hosts, **untrusted)
