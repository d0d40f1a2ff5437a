"""Counting without the lock: exact under threads, built outside the lock, carried across changes.

``acquire()`` and a lease's success count on lock-free counters (see ``zklb.stats.StatsRecorder``);
``stats()`` and ``pool_stats()`` take references under the pool's lock and build outside it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping

import pytest

from zklb import LoadBalancer, Membership, ServiceInstance
from zklb.stats import StatsRecorder
from zklb.strategies.least_connections import LeastConnectionsPicker

SERVERS = [f"http://10.0.0.{i}:80" for i in range(1, 21)]


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections"])
def test_counts_stay_exact_under_threads(strategy: str) -> None:
    lb = LoadBalancer.static(SERVERS, strategy=strategy)
    threads, per_thread = 8, 2_000
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        barrier.wait(10)
        for i in range(per_thread):
            lease = lb.acquire()
            if (i + k) % 97 == 0:
                lease.release(False)  # a failure now and then: the locked path beside the lock-free one
            else:
                with lease:
                    pass

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
        assert not t.is_alive()
    stats = lb.stats()
    assert sum(s.in_flight for s in stats.values()) == 0
    assert sum(s.requests for s in stats.values()) == threads * per_thread
    failures = sum(1 for k in range(threads) for i in range(per_thread) if (i + k) % 97 == 0)
    assert sum(s.failures for s in stats.values()) == failures


class LockCheckingMapping(Mapping[str, ServiceInstance]):
    """Stands for a pool's by-id index; notes each time it is iterated with the pool's lock held."""

    def __init__(self, inner: Mapping[str, ServiceInstance], lock: threading.Lock) -> None:
        self.inner = inner
        self.lock = lock
        self.locked_reads = 0
        self.reads = 0

    def __getitem__(self, key: str) -> ServiceInstance:
        return self.inner[key]

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        self.locked_reads += self.lock.locked()
        return iter(self.inner)


def test_stats_and_pool_stats_build_their_snapshots_outside_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    lb = LoadBalancer.static([f"http://10.1.{i // 250}.{i % 250}:80" for i in range(10_000)])
    with lb.acquire():
        pass
    lock = lb._lock
    snapshots_under_lock: list[bool] = []
    original = StatsRecorder.snapshot

    def checking_snapshot(self: StatsRecorder, *args: object) -> object:
        snapshots_under_lock.append(lock.locked())
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(StatsRecorder, "snapshot", checking_snapshot)
    stats = lb.stats()
    assert len(stats) == 10_000 and len(snapshots_under_lock) == 10_000
    assert not any(snapshots_under_lock)
    assert sum(s.requests for s in stats.values()) == 1

    members = lb.membership
    index = LockCheckingMapping(members.by_id, lock)
    object.__setattr__(members, "by_id", index)
    pool = lb.pool_stats()
    assert (pool.size, pool.healthy) == (10_000, 10_000)
    assert index.reads >= 1 and index.locked_reads == 0


def test_a_request_in_flight_stays_counted_when_its_instance_leaves_and_comes_back() -> None:
    lb = LoadBalancer.static(SERVERS[:3], strategy="least_connections")
    members = lb.membership
    lease = lb.acquire()
    key = lease.server.id
    others = tuple(i for i in members.instances if i.id != key)
    lb._install(Membership(members.service, members.version + 1, others))
    assert key not in lb.stats()
    lb._install(Membership(members.service, members.version + 2, members.instances))
    assert lb.stats()[key].in_flight == 1  # still out there: least connections must see it
    assert all(lb.acquire().server.id != key for _ in range(2))  # the two idle ones first
    lease.release()
    assert lb.stats()[key].in_flight == 0
    assert lb.stats()[key].requests == 1  # recorded: it is back in the pool


def test_statistics_of_an_instance_that_rejoins_start_afresh() -> None:
    lb = LoadBalancer.static(SERVERS[:2])
    members = lb.membership
    gone = members.instances[0]
    with lb.acquire(exclude=[members.instances[1]]):
        pass
    assert lb.stats()[gone.id].requests == 1
    lb._install(Membership(members.service, members.version + 1, members.instances[1:]))
    lb._install(Membership(members.service, members.version + 2, members.instances))
    assert lb.stats()[gone.id].requests == 0


def test_least_connections_acquire_and_release_never_wait_for_the_lock() -> None:
    lb = LoadBalancer.static(SERVERS[:4], strategy="least_connections")
    done: list[str] = []

    def requests() -> None:
        for _ in range(200):
            with lb.acquire():
                pass
        held = [lb.acquire() for _ in range(4)]
        done.extend(lease.server.id for lease in held)  # least loaded each time: the four, once each
        for lease in held:
            lease.release()

    with lb._lock:  # as stats(), health's decisions or a membership swap hold it
        worker = threading.Thread(target=requests)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the hot path waited for the pool's lock"
        assert not lb._deferred  # and nothing was queued: the releases were applied at once
    assert sorted(done) == sorted(lb.membership.by_id)
    stats = lb.stats()
    assert sum(s.requests for s in stats.values()) == 204
    assert all(s.in_flight == 0 for s in stats.values())


def test_while_the_counts_are_owned_elsewhere_releases_queue_and_acquire_waits() -> None:
    lb = LoadBalancer.static(SERVERS[:3], strategy="least_connections")
    others = [lb.acquire(), lb.acquire()]
    first = lb.acquire()  # one request on each of the three
    got: list[str] = []
    with lb._exclusive():  # as a locked section that changes counts (or a hot-path owner) does
        first.release()  # returns at once: queued, the lock being held
        assert len(lb._deferred) == 1
        waiter = threading.Thread(target=lambda: got.append(lb.acquire().server.id))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got  # it needs the counts: it waits for them, bounded
    waiter.join(10)
    assert not waiter.is_alive()
    # The queued release was applied before that pick: the only idle instance was taken.
    assert got == [first.server.id] and not lb._deferred
    assert {k: s.in_flight for k, s in lb.stats().items()} == dict.fromkeys(lb.membership.by_id, 1)
    for lease in others:
        lease.release()


def test_least_connections_counts_converge_with_threads_racing_owners_and_picker_swaps() -> None:
    servers = SERVERS[:6]
    lb = LoadBalancer.static(servers, strategy="least_connections", health=None)
    members = lb.membership
    threads, per_thread = 6, 1_500
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            barrier.wait(10)
            held = []
            for i in range(per_thread):
                held.append(lb.acquire())
                if len(held) > 1 + k % 3 or i % 5 == 0:
                    lease = held.pop(0)
                    if i % 11 == 0:
                        lease.release(False)  # a failure now and then: the locked path
                    elif i % 2:
                        lease.release()
                    else:
                        with lease:  # (a block's end has a path of its own)
                            pass
            for lease in held:
                lease.release()
        except BaseException as exc:
            errors.append(exc)

    def disturb() -> None:
        barrier.wait(10)
        version = members.version
        while not stop.is_set():
            version += 1  # a new snapshot of the same instances: the picker is rebuilt and re-seeded
            lb._install(Membership(members.service, version, members.instances))
            with lb._exclusive():
                time.sleep(0)  # owners elsewhere: hot-path acquires wait, releases queue
            lb.stats()

    disturber = threading.Thread(target=disturb)
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        disturber.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
            assert not t.is_alive()
    finally:
        stop.set()
        disturber.join(30)
        sys.setswitchinterval(switch)
    assert not errors, errors[:3]
    stats = lb.stats()  # applies what is still queued
    assert all(s.in_flight == 0 for s in stats.values())
    assert sum(s.requests for s in stats.values()) == threads * per_thread
    picker = lb._picker
    assert isinstance(picker, LeastConnectionsPicker)
    assert all(picker.in_flight(key) == 0 for key in members.by_id)  # the picker agrees: no drift
    # No instance lost from the rotation, and sequential picks are least loaded: one each, then again.
    held = [lb.acquire() for _ in range(2 * len(servers))]
    assert sorted(lease.server.id for lease in held) == sorted(2 * list(members.by_id))
    for lease in held:
        lease.release()


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections"])
def test_requests_recorded_are_the_finished_ones_with_an_outcome_in_the_pool(strategy: str) -> None:
    lb = LoadBalancer.static(SERVERS[:2], strategy=strategy)
    members = lb.membership
    one, other = members.instances
    for end in ("block", "release", "failure", "cancel", "interrupt"):
        lease = lb.acquire(exclude=[other])
        if end == "block":
            with lease:
                pass
        elif end == "release":
            lease.release()
        elif end == "failure":
            lease.release(False)
        elif end == "cancel":
            lease.cancel()  # abandoned: nothing learnt, not a request recorded
        else:
            with pytest.raises(KeyboardInterrupt), lease:
                raise KeyboardInterrupt
    assert lb.stats()[one.id].requests == 3
    lb.report(one, success=True, latency=0.01)  # a server from get_server(): recorded, no lease ended
    assert (lb.stats()[one.id].requests, lb.stats()[one.id].in_flight) == (4, 0)
    late = lb.acquire(exclude=[other])
    lb._install(Membership(members.service, members.version + 1, (other,)))
    late.release()  # ended after its instance left: not recorded
    lb._install(Membership(members.service, members.version + 2, members.instances))
    assert (lb.stats()[one.id].requests, lb.stats()[one.id].in_flight) == (0, 0)  # rejoined: afresh
    with lb.acquire(exclude=[other]):
        pass
    assert lb.stats()[one.id].requests == 1
