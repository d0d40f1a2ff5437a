"""Timeouts given to calls are checked like the constructors' ones: a bad one raises and changes nothing."""

from __future__ import annotations

import math

import pytest
from kazoo.client import KazooClient

from zklb import ConfigurationError, Registry, ServiceWatcher

BAD = [-1.0, math.nan, math.inf, "1"]


@pytest.mark.parametrize("bad", BAD)
def test_registration_calls_refuse_a_bad_timeout_and_change_nothing(
    zk: KazooClient, service: str, bad: object
) -> None:
    with Registry(zk) as registry:
        reg = registry.register(service, "http://10.0.0.1:80", weight=2)
        with pytest.raises(ConfigurationError, match="timeout"):
            reg.update(weight=7, timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="timeout"):
            reg.drain(timeout=bad)  # type: ignore[arg-type]
        assert (reg.instance.weight, reg.draining) == (2, False)
        with pytest.raises(ConfigurationError, match="drain"):
            reg.close(drain=bad)  # type: ignore[arg-type]
        assert not reg.closed
        with pytest.raises(ConfigurationError, match="timeout"):
            registry.close(timeout=bad)  # type: ignore[arg-type]
        assert registry.registrations() == (reg,)


@pytest.mark.parametrize("bad", [*BAD, 0.0])
def test_watcher_start_refuses_a_bad_timeout(zk: KazooClient, service: str, bad: object) -> None:
    watcher = ServiceWatcher(zk, service)
    try:
        with pytest.raises(ConfigurationError, match="timeout"):
            watcher.start(timeout=bad)  # type: ignore[arg-type]
        assert watcher.start(timeout=10.0) is watcher  # nothing was left half started
    finally:
        watcher.close()
