"""The fast least-connections picker against the obvious one (`least_connections_reference`), behind a
balancer, with operations from several threads at once and lock-free picks racing them."""

from __future__ import annotations

import sys
import threading
import time
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies.least_connections_reference import (
    ReferenceLeastConnections,
    ReferenceLeastConnectionsPicker,
)
from tests.strategies.test_least_connections import assert_consistent

from zklb import Lease, LoadBalancer, Membership, Picker, ServiceInstance
from zklb.strategies import least_connections
from zklb.strategies.least_connections import LeastConnectionsPicker

weight_lists = st.one_of(
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
    st.lists(st.sampled_from([1, 3, 999_961, 999_979, 999_983]), min_size=1, max_size=6),
)
# One program per thread: acquire (or acquire excluding one instance), end with success or failure by
# release(), or as a ``with`` block's end does (the least-connections fast path's lease has its own).
programs = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "acquire", "exclude", "release", "fail", "exit"]),
            st.integers(min_value=0, max_value=1_000),
        ),
        max_size=40,
    ),
    min_size=2,
    max_size=4,
)


def members_for(weights: list[int]) -> Membership:
    return Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, weight=w)
            for k, w in enumerate(weights)
        ),
    )


def test_the_reference_is_a_strategy_a_balancer_can_use() -> None:
    members = members_for([1, 2])
    picker = ReferenceLeastConnections().build(members)
    assert isinstance(picker, Picker)
    lb = LoadBalancer.static(members.instances, strategy=ReferenceLeastConnections())
    with lb.acquire() as first, lb.acquire() as second, lb.acquire() as third:
        # i1 has twice the weight: after one request each, it is the less loaded (1/2 < 1/1).
        assert ({first.id, second.id}, third.id) == ({"i0", "i1"}, "i1")


@settings(max_examples=150, deadline=None)
@given(
    weights=weight_lists,
    program=programs.map(lambda p: [step for steps in p for step in steps]),
    limit=st.sampled_from([1, 3, None]),
    scaled=st.booleans(),
)
def test_a_balancer_agrees_with_the_reference_step_by_step(
    weights: list[int], program: list[tuple[str, int]], limit: int | None, scaled: bool
) -> None:
    """One thread: ``acquire()``'s fast path and a ``with`` block's end (the picker's fast paths written
    out in the pool and the lease) are exact at every step, and leave the picker's structure sound."""
    members = members_for(weights)
    names = list(members.by_id)
    with patch.object(least_connections, "_MAX_MULTIPLE", 0 if scaled else least_connections._MAX_MULTIPLE):
        lb = LoadBalancer.static(members.instances, strategy="least_connections", health=None)
    picker = lb._picker
    assert isinstance(picker, LeastConnectionsPicker)
    if limit is not None:
        picker._limit = limit  # cut the ring's consumed part off very often
    reference = ReferenceLeastConnectionsPicker(members)
    held: list[Lease] = []
    for op, k in program:
        if op in ("acquire", "exclude") or not held:
            exclude = {names[k % len(names)]} if op == "exclude" and len(names) > 1 else set()
            expected = reference.least_ids(exclude)
            lease = lb.acquire(exclude=exclude)
            assert lease.server.id in expected
            reference.acquired(lease.server)
            held.append(lease)
        else:
            lease = held.pop(k % len(held))
            if op == "exit":
                with lease:
                    pass
            else:
                lease.release(op == "release")
            reference.released(lease.server, True, 0.0)
        assert {key: s.in_flight for key, s in lb.stats().items()} == reference.counts
        assert {key: picker.in_flight(key) for key in names} == reference.counts
        assert_consistent(picker)


@settings(max_examples=60, deadline=None)
@given(weights=weight_lists, programs=programs, scaled=st.booleans())
def test_a_balancer_agrees_with_the_reference_under_concurrent_operations(
    weights: list[int], programs: list[list[tuple[str, int]]], scaled: bool
) -> None:
    members = members_for(weights)
    names = list(members.by_id)
    # scaled: the variant for weights whose common multiple is too large (keeps counts).
    with patch.object(least_connections, "_MAX_MULTIPLE", 0 if scaled else least_connections._MAX_MULTIPLE):
        lb = LoadBalancer.static(members.instances, strategy="least_connections", health=None)
    reference = ReferenceLeastConnectionsPicker(members)
    # Each operation and the reference's update and check happen as one step; what races them is the
    # balancer's own concurrency: lock-free picks, pool_stats() and locked sections holding the lock,
    # and sections that own the picker's counts (a hot-path acquire then waits, a release queues).
    turn = threading.Lock()
    stop = threading.Event()
    wrong: list[str] = []
    errors: list[BaseException] = []
    held: list[Lease] = []

    def run(program: list[tuple[str, int]]) -> None:
        try:
            for op, k in program:
                with turn:
                    if op in ("acquire", "exclude") or not held:
                        exclude = {names[k % len(names)]} if op == "exclude" and len(names) > 1 else set()
                        expected = reference.least_ids(exclude)
                        lease = lb.acquire(exclude=exclude)
                        if lease.server.id not in expected:
                            wrong.append(f"{op} {exclude}: got {lease.server.id}, least {expected}")
                        reference.acquired(lease.server)
                        held.append(lease)
                    else:
                        lease = held.pop(k % len(held))
                        if op == "exit":
                            lease.__exit__(None, None, None)
                        else:
                            lease.release(op == "release")
                        reference.released(lease.server, True, 0.0)
        except BaseException as exc:
            errors.append(exc)

    def disturb() -> None:
        try:
            while not stop.is_set():
                if lb.get_server() not in members:
                    wrong.append("a pick outside the snapshot")
                lb.pool_stats()
                with lb._lock:  # as any locked section does, now and then at the worst moment
                    time.sleep(0)  # let the others run meanwhile: the hot path goes on without the lock
                with lb._exclusive():  # as a locked section that changes counts does: hot path owners
                    time.sleep(0)  # meanwhile fall back (acquire waits for it, a release is queued)
        except BaseException as exc:
            errors.append(exc)

    disturber = threading.Thread(target=disturb)
    workers = [threading.Thread(target=run, args=(program,)) for program in programs]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # thread switches between almost any two steps
    try:
        disturber.start()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(30)
    finally:
        stop.set()
        disturber.join(30)
        sys.setswitchinterval(switch)
    assert not errors, errors[:3]
    assert not wrong, wrong[:5]
    picker = lb._picker
    assert isinstance(picker, LeastConnectionsPicker)
    in_flight = {key: s.in_flight for key, s in lb.stats().items()}  # applies queued releases first
    assert in_flight == reference.counts
    assert {key: picker.in_flight(key) for key in names} == reference.counts
    assert_consistent(picker)
    for lease in held:
        lease.release()
    assert all(s.in_flight == 0 for s in lb.stats().values())
    assert {key: picker.in_flight(key) for key in names} == dict.fromkeys(names, 0)
