"""Pickers under threads: lock-free picks racing the (locked) load updates never fail or stray."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from unittest.mock import patch

import pytest

from zklb.instance import ServiceInstance
from zklb.membership import Membership
from zklb.strategies import (
    ConsistentHash,
    LeastConnections,
    LeastRequest,
    PeakEwma,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    Strategy,
    WeightedRandom,
    WeightedRoundRobin,
    least_connections,
)
from zklb.strategies.least_connections import LeastConnectionsPicker

PICKERS = 8
PICKS_PER_THREAD = 20_000
UPDATES = 20_000


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
        WeightedRandom(random.Random(4)),
        LeastRequest(rng=random.Random(5)),
        LeastRequest(3, 0.5, rng=random.Random(6)),
        ConsistentHash(rng=random.Random(7)),
        PeakEwma(rng=random.Random(8)),
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

    # The balancer calls acquire_pick() instead of pick() + acquired() when a picker has it.
    acquire_pick: Callable[[], ServiceInstance] | None = getattr(picker, "acquire_pick", None)

    def update_until_done() -> None:
        rng = random.Random(3)
        try:
            while not done.is_set():
                instance = members.instances[rng.randrange(len(members))]
                with lock:  # the balancer serialises updates, never picks
                    draw = rng.random()
                    if acquire_pick is not None and draw < 0.3:
                        taken = acquire_pick()
                        if taken not in members:
                            strays.append(taken)
                        counts[taken.id] += 1
                    elif draw < 0.6 or counts[instance.id] == 0:
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


@pytest.mark.parametrize(
    ("weights", "scaled"),
    [((1,), False), ((1, 2, 3), False), ((1, 2, 3), True)],
    ids=["equal", "small", "scaled"],
)
def test_least_connections_picks_race_acquire_pick_and_releases(
    weights: tuple[int, ...], scaled: bool
) -> None:
    """Leases held and returned as under load, so the lowest load keeps changing under the picks."""
    members = Membership(
        service="svc",
        version=1,
        instances=tuple(
            ServiceInstance(id=f"i{k:02d}", host="127.0.0.1", port=8000 + k, weight=weights[k % len(weights)])
            for k in range(12)
        ),
    )
    # scaled: the variant for weights whose common multiple is too large (keeps counts).
    with patch.object(least_connections, "_MAX_MULTIPLE", 0 if scaled else least_connections._MAX_MULTIPLE):
        picker = LeastConnections().build(members)
    assert isinstance(picker, LeastConnectionsPicker)
    assert (type(picker).__name__ == "_ScaledLeastConnectionsPicker") == scaled
    picker._limit = 16  # cut the ring's consumed part often, to race that too
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []
    strays: list[object] = []
    held: list[ServiceInstance] = []

    def pick_until_done() -> None:
        try:
            k = 0
            while not done.is_set():
                k += 1
                found = picker.pick() if k % 50 else picker.pick_excluding({"i00"})
                if found not in members:
                    strays.append(found)
        except BaseException as exc:
            errors.append(exc)

    def update() -> None:
        rng = random.Random(4)
        try:
            for _ in range(UPDATES):
                with lock:
                    # Between idle and every instance busy with several requests, back and forth.
                    if held and rng.random() < (0.5 if len(held) < 40 else 0.7):
                        picker.released(held.pop(rng.randrange(len(held))), True, 0.0)
                    else:
                        held.append(picker.acquire_pick())
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    updater = threading.Thread(target=update)
    pickers = [threading.Thread(target=pick_until_done) for _ in range(PICKERS)]
    for thread in pickers:
        thread.start()
    updater.start()
    updater.join()
    for thread in pickers:
        thread.join()
    assert errors == []
    assert strays == []
    counts = dict.fromkeys(members.by_id, 0)
    for server in held:
        counts[server.id] += 1
    assert {i: picker.in_flight(i) for i in counts} == counts
    loads = {i: Fraction(counts[i], members.by_id[i].weight) for i in counts}
    assert loads[picker.pick().id] == min(loads.values())
