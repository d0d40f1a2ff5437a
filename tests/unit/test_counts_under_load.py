"""In-flight counts read while lock-free requests run: exact per instance, and a switch of strategy
under load seeds the new load-tracking picker with the real counts.

Threads switch every microsecond here, so that a read of the two counters is split by other
threads' requests as often as possible (at the default interval it happens about once in 150 runs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from zklb import LoadBalancer
from zklb.testing import wait_until

SERVERS = [f"http://127.0.0.{i}:8080" for i in range(1, 5)]
THREADS = 4


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Storm:
    """``THREADS`` threads doing ``with lb.acquire(): pass`` until stopped; counts their requests."""

    def __init__(self, lb: LoadBalancer) -> None:
        self.stop = threading.Event()
        self.done = [0] * THREADS
        self.threads = [threading.Thread(target=self._run, args=(k, lb), daemon=True) for k in range(THREADS)]
        for thread in self.threads:
            thread.start()

    def _run(self, k: int, lb: LoadBalancer) -> None:
        while not self.stop.is_set():
            with lb.acquire():
                pass
            self.done[k] += 1

    def running(self, at_least: int) -> bool:
        return min(self.done) >= at_least

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()


def test_an_instance_never_shows_more_requests_in_flight_than_there_are_threads(fast_switching: None) -> None:
    lb = LoadBalancer.static(SERVERS, strategy="round_robin", health=None)
    storm = Storm(lb)
    most = 0
    try:
        wait_until(lambda: storm.running(10), 10, "the threads' first requests")
        for _ in range(300):  # each stats() reads every instance's two counters
            most = max(most, *(s.in_flight for s in lb.stats().values()))
    finally:
        storm.end()
    assert most <= THREADS, f"an instance showed {most} requests in flight with {THREADS} threads"
    assert all(s.in_flight == 0 for s in lb.stats().values())


@pytest.mark.parametrize("target", ["least_connections", "least_request"])
def test_a_switch_to_a_load_tracking_strategy_under_load_counts_exactly(
    fast_switching: None, target: str
) -> None:
    for _attempt in range(8):
        switch_under_load(target)


def switch_under_load(target: str) -> None:
    lb = LoadBalancer.static(SERVERS, strategy="round_robin", health=None)
    storm = Storm(lb)
    try:
        wait_until(lambda: storm.running(20), 10, "the threads' first requests")
        lb.set_strategy(target)
        more = min(storm.done) + 20
        wait_until(lambda: storm.running(more), 10, "requests under the new strategy")
    finally:
        storm.end()
    lb.stats()  # applies releases queued while the counts were owned
    picker: Any = lb._picker
    if hasattr(picker, "in_flight"):  # least connections
        counts = [picker.in_flight(s.id) for s in lb.membership.instances]
    else:  # least request keeps them in a list, by the snapshot's order
        counts = list(picker._in_flight)
    assert set(counts) == {0}, f"nothing in flight, yet the new picker counts {counts}"
    quiet = set()
    for _ in range(100):  # one at a time: every instance as idle as the others
        with lb.acquire() as server:
            quiet.add(server.url)
    assert quiet == set(SERVERS)


def test_counts_lost_to_an_interrupted_owner_are_taken_over_and_rebuilt(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A KeyboardInterrupt from a signal handler, landing between taking the picker's counts and the
    # ``try`` that gives them back, leaves them ownerless, maybe half-updated (here: scrambled).
    monkeypatch.setattr("zklb._pool_state._OWNER_WAIT", 0.2)
    lb = LoadBalancer.static(SERVERS, strategy="least_connections", health=None)
    busy = [lb.acquire(), lb.acquire()]  # two requests in flight on two instances
    assert lb._owner.pop()  # what the interrupted owner took
    picker: Any = lb._picker
    picker.seed({s.id: 7 for s in lb.membership.instances})  # what it left behind, say
    # A locked path (exclude=) waits, then takes the counts over; it picks by the real counts.
    with caplog.at_level("ERROR", logger="zklb.balancer"), lb.acquire(exclude=[busy[0].server]) as server:
        assert server.id not in {b.server.id for b in busy}
    assert "rebuilt from the request counters" in caplog.text
    assert lb._owner == [True]
    for lease in busy:
        lease.release()
    assert [picker.in_flight(s.id) for s in lb.membership.instances] == [0, 0, 0, 0]
    with lb.acquire():  # and the hot path has its counts back
        pass
    assert lb._owner == [True]
