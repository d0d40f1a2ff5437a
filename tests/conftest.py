"""Shared fixtures: one real 3-node ZooKeeper ensemble per test session (see zklb.testing)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from zklb.testing import ZooKeeperEnsemble


@pytest.fixture(scope="session")
def ensemble() -> Iterator[ZooKeeperEnsemble]:
    """A real 3-node ensemble on 127.0.0.1, started once for the whole test session."""
    ens = ZooKeeperEnsemble(size=3)
    ens.start(timeout=90)
    try:
        yield ens
    finally:
        ens.close()


@pytest.fixture
def healthy_ensemble(ensemble: ZooKeeperEnsemble) -> Iterator[ZooKeeperEnsemble]:
    """The session ensemble, brought back to full strength after a test that stopped members."""
    yield ensemble
    stopped = [m.index for m in ensemble.members if not m.running]
    for index in stopped:
        ensemble.start_member(index, wait=False)
    if stopped:
        ensemble.wait_serving(timeout=90)


@pytest.fixture
def zk_hosts(healthy_ensemble: ZooKeeperEnsemble) -> str:
    """The ensemble's connection string."""
    return healthy_ensemble.hosts


@pytest.fixture
def zk(zk_hosts: str) -> Iterator[KazooClient]:
    """A started kazoo client for the test to inspect and change ZooKeeper directly."""
    client = KazooClient(hosts=zk_hosts, timeout=10.0)
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture
def service() -> str:
    """A service name no other test uses, so tests never see each other's instances."""
    return f"svc-{uuid.uuid4().hex[:10]}"
