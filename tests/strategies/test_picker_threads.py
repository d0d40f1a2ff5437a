"""Pickers under threads: lock-free picks racing the (locked) load updates never fail or stray."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from fractions import Fraction

import pytest

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import (
    LeastConnections,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    Strategy,
    WeightedRoundRobin,
)

PICKERS = 8
PICKS_PER_THREAD = 20_000


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every few microseconds so that picks really interleave with updates."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize(
    "strategy",
    [
        RoundRobin(),
        WeightedRoundRobin(),
        WeightedRoundRobin(schedule_limit=1),
        LeastConnections(),
        RandomChoice(random.Random(1)),
        PowerOfTwoChoices(random.Random(2)),
    ],
    ids=repr,
)
def test_picks_race_updates_without_errors(strategy: Strategy) -> None:
    members = Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=f"i{k:02d}", host="127.0.0.1", port=8000 + k, weight=1 + k % 4)
            for k in range(6)
        ),
    )
    picker = strategy.build(members)
    lock = threading.Lock()
    counts = dict.fromkeys(members.by_id, 0)
    done = threading.Event()
    errors: list[BaseException] = []
    strays: list[object] = []

    def pick_many() -> None:
        try:
            for k in range(PICKS_PER_THREAD):
                found = picker.pick() if k % 50 else picker.pick_excluding({"i00", "i01"})
                if found not in members:
                    strays.append(found)
        except BaseException as exc:
            errors.append(exc)

    def update_until_done() -> None:
        rng = random.Random(3)
        try:
            while not done.is_set():
                instance = members.instances[rng.randrange(len(members))]
                with lock:  # the balancer serialises updates, never picks
                    if rng.random() < 0.5 or counts[instance.id] == 0:
                        counts[instance.id] += 1
                        picker.acquired(instance)
                    else:
                        counts[instance.id] -= 1
                        picker.released(instance, True, 0.0)
        except BaseException as exc:
            errors.append(exc)

    updater = threading.Thread(target=update_until_done)
    pickers = [threading.Thread(target=pick_many) for _ in range(PICKERS)]
    updater.start()
    for thread in pickers:
        thread.start()
    for thread in pickers:
        thread.join()
    done.set()
    updater.join()
    assert errors == []
    assert strays == []
    # Once updates stop, the picker's view matches the counts it was given.
    if isinstance(strategy, LeastConnections):
        loads = {i: Fraction(counts[i], members.by_id[i].weight) for i in counts}
        assert loads[picker.pick().id] == min(loads.values())
