"""A lease released by a finaliser (a garbage-collection pass) never deadlocks the balancer.

Any allocation may start a GC pass, and a pass runs finalisers on the thread that allocated, possibly
inside the balancer's locked sections (``stats()`` builds a dict under the lock, a least-connections
pick allocates too). A release from there must not wait for a lock its own thread holds.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from zklb import Lease, LoadBalancer, Membership, Picker, ServiceInstance
from zklb.strategies.round_robin import RoundRobinPicker

SERVERS = [f"http://10.0.0.{i}:80" for i in range(1, 41)]


class DroppedResponse:
    """Stands for a response that holds a lease and is dropped inside a reference cycle."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.cycle = self

    def __del__(self) -> None:
        self.lease.cancel()


@pytest.fixture
def low_gc_threshold() -> Iterator[None]:
    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1)  # a collection on nearly every allocation: finalisers run inside locked sections
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.collect()


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections"])
@pytest.mark.usefixtures("low_gc_threshold")
def test_finaliser_releases_inside_locked_sections_never_deadlock(strategy: str) -> None:
    lb = LoadBalancer.static(SERVERS, strategy=strategy)
    finished = threading.Event()

    def churn() -> None:
        for _ in range(300):
            DroppedResponse(lb.acquire())  # garbage at once, freed only by a GC pass
            lb.stats()  # allocates under the lock: where the pass, and the finaliser, may land
            with lb.acquire():
                pass
        finished.set()

    worker = threading.Thread(target=churn, daemon=True)  # daemon: a deadlocked worker must not hang exit
    worker.start()
    assert finished.wait(60), "a release from a finaliser deadlocked the balancer"
    gc.collect()
    stats = lb.stats()  # applies releases queued while the lock was held
    assert sum(s.in_flight for s in stats.values()) == 0
    assert sum(s.requests for s in stats.values()) == 300  # cancelled leases record no outcome
    if strategy == "least_connections":
        # The picker's own counts agree: every instance is idle again, so picks spread evenly.
        picked = {lb.acquire().server.id for _ in range(len(SERVERS))}
        assert len(picked) == len(SERVERS)


class CollectingPicker(RoundRobinPicker):
    """Round robin whose ``acquired()`` (called under the balancer's lock) runs a real GC pass, as
    any allocation there may."""

    tracks_load = True

    def acquired(self, instance: ServiceInstance) -> None:
        gc.collect()


class Collecting:
    name: ClassVar[str] = "collecting"

    def build(self, membership: Membership) -> Picker:
        return CollectingPicker(membership)


def test_a_gc_pass_inside_the_lock_that_releases_a_lease_does_not_deadlock() -> None:
    lb = LoadBalancer.static(SERVERS[:3], strategy=Collecting())
    DroppedResponse(lb.acquire())  # a cycle: freed, and its lease cancelled, by the next GC pass
    second: list[Lease] = []
    worker = threading.Thread(target=lambda: second.append(lb.acquire()), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a release from a finaliser deadlocked the balancer"
    (lease,) = second
    assert {k: s.in_flight for k, s in lb.stats().items() if s.in_flight} == {lease.server.id: 1}
    lease.release()
    assert sum(s.in_flight for s in lb.stats().values()) == 0


def test_a_release_that_finds_the_lock_held_is_applied_by_the_next_acquire() -> None:
    lb = LoadBalancer.static(SERVERS[:2], strategy="least_connections")
    lease = lb.acquire()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lb._lock:  # stands for any thread inside a locked section
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    releaser = threading.Thread(target=lease.release, args=(False,), daemon=True)
    releaser.start()
    releaser.join(5)
    assert not releaser.is_alive()  # returned without waiting for the lock
    release.set()
    thread.join(10)
    assert lb.stats()[lease.server.id].in_flight == 0
    assert lb.stats()[lease.server.id].failures == 1


def test_thousands_of_queued_releases_are_applied_without_recursion() -> None:
    lb = LoadBalancer.static(SERVERS[:10], strategy="least_connections")
    leases = [lb.acquire() for _ in range(5000)]

    def cancel_all() -> None:
        for lease in leases:
            lease.cancel()

    with lb._lock:  # every release below finds the lock held, so all of them are queued
        releaser = threading.Thread(target=cancel_all)
        releaser.start()
        releaser.join(30)
    assert sum(s.in_flight for s in lb.stats().values()) == 0
    assert {lb.acquire().server.id for _ in range(10)} == {s.id for s in lb.servers()}  # all idle again
