"""Calls against a ZooKeeper that refuses connections: each is bounded by its own timeout, concurrent
callers share one connect attempt, and close() never waits for a connect in progress."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import pytest
from tests.unit.test_balancer_lifecycle import refused_address

from zklb import ClosedError, LoadBalancer, NoServerAvailable, Registry, RegistryError, ZklbError
from zklb.testing import wait_until

TIMEOUT = 2.0


def test_concurrent_registers_fail_together_not_one_after_another() -> None:
    registry = Registry(refused_address())
    ended: list[float] = []
    errors: list[BaseException] = []

    def register(port: int) -> None:
        try:
            registry.register("svc", f"http://10.0.0.1:{port}", timeout=TIMEOUT)
        except ZklbError as exc:
            errors.append(exc)
        ended.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=register, args=(port,)) for port in (81, 82, 83)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    registry.close()
    assert len(errors) == 3 and all(isinstance(e, RegistryError) for e in errors), errors
    # One shared attempt: the last caller is done about one timeout after the first began, where
    # attempts one after another took 2, 4 and 6 s.
    assert max(ended) - started < 2 * TIMEOUT


@pytest.mark.parametrize("component", ["balancer", "registry"])
def test_close_does_not_wait_for_a_connect_in_progress(component: str) -> None:
    hosts = refused_address()
    waiting = 5.0
    errors: list[BaseException] = []
    if component == "balancer":
        lb = LoadBalancer(hosts, "svc", start_timeout=waiting)
        handle = lb._handle
        begin: Callable[[], object] = lb.start
        close = lb.close
    else:
        registry = Registry(hosts, request_timeout=waiting)
        handle = registry._handle
        begin = functools.partial(registry.register, "svc", "http://10.0.0.1:80")
        close = registry.close
    assert handle is not None

    def attempt() -> None:
        try:
            begin()
        except ZklbError as exc:
            errors.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    wait_until(lambda: handle._connecting is not None, 10, "the connect to begin")
    started = time.monotonic()
    close()
    assert time.monotonic() - started < waiting / 2
    thread.join(waiting + 10)
    assert not thread.is_alive()
    assert len(errors) == 1, errors
    if component == "balancer":
        with pytest.raises(ClosedError):
            lb.get_server()


def test_an_explicit_start_waits_its_own_timeout_not_that_of_a_lazy_start_it_joined() -> None:
    lb = LoadBalancer(refused_address(), "svc", start_timeout=0.5)
    try:
        lazy_errors: list[BaseException] = []

        def lazy_pick() -> None:
            try:
                lb.get_server()
            except NoServerAvailable as exc:
                lazy_errors.append(exc)

        lazy = threading.Thread(target=lazy_pick, daemon=True)
        lazy.start()  # begins a background start that gives up after start_timeout
        wait_until(lambda: lb._starting is not None, 10, "the lazy start to begin")
        started = time.monotonic()
        with pytest.raises(RegistryError):
            lb.start(timeout=2.0)
        assert time.monotonic() - started >= 1.5  # its own 2 s, not the lazy start's 0.5 s
        lazy.join(10)
        assert len(lazy_errors) == 1
    finally:
        lb.close()
