"""ZKLB_HOSTS and ZKLB_ROOT: the defaults wherever a hosts string or a root is optional."""

from __future__ import annotations

import logging

import pytest

from zklb import LoadBalancer, Registry, ServiceWatcher, _config, connect


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZKLB_HOSTS", raising=False)
    monkeypatch.delenv("ZKLB_ROOT", raising=False)
    monkeypatch.setattr(_config, "_fallback_logged", False)


@pytest.mark.usefixtures("no_env")
def test_without_the_environment_the_fallbacks_are_used_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="zklb"):
        first = LoadBalancer(service="api")
        second = Registry()
    try:
        assert first._handle is not None and first._handle._hosts == "127.0.0.1:2181"
        assert second._handle._hosts == "127.0.0.1:2181"
        assert first.root == second.root == "/services"
        said = [r for r in caplog.records if "ZKLB_HOSTS is not set" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.INFO
    finally:
        first.close()
        second.close()


@pytest.mark.usefixtures("no_env")
def test_the_environment_is_the_default_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKLB_HOSTS", "zk1:2181,zk2:2181")
    monkeypatch.setenv("ZKLB_ROOT", "/team/services/")
    lb = LoadBalancer(service="api")
    registry = Registry()
    watcher = ServiceWatcher(service="api")
    discovery = connect(start_timeout=0.5)
    try:
        for handle in (lb._handle, registry._handle, watcher._handle, discovery._handle):
            assert handle is not None and handle._hosts == "zk1:2181,zk2:2181"
        assert lb.root == registry.root == watcher.root == discovery.root == "/team/services"
        # What a Discovery makes uses its root unless told otherwise.
        assert discovery.balancer("api").root == "/team/services"
        assert discovery.balancer("api", root="/other").root == "/other"
    finally:
        discovery.close()
        for component in (lb, registry, watcher):
            component.close()


@pytest.mark.usefixtures("no_env")
def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKLB_HOSTS", "zk1:2181")
    monkeypatch.setenv("ZKLB_ROOT", "/env-root")
    lb = LoadBalancer("10.1.1.1:2181", "api", root="/explicit")
    try:
        assert lb._handle is not None and lb._handle._hosts == "10.1.1.1:2181"
        assert lb.root == "/explicit"
    finally:
        lb.close()


def test_static_balancers_still_need_no_zookeeper(no_env: None) -> None:
    lb = LoadBalancer.static(["http://127.0.0.1:8001"])
    assert lb._handle is None
    assert lb.get_server().port == 8001
    assert lb.pool_stats().connection == "static"
