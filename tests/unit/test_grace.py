"""EmptyGrace: when to keep publishing the last pool after every instance left, on a fake clock."""

from __future__ import annotations

from tests.unit.conftest import FakeClock

from zklb._grace import EmptyGrace
from zklb.instance import ServiceInstance

A = ServiceInstance.parse("http://10.0.0.1:80", id="a")
B = ServiceInstance.parse("http://10.0.0.2:80", id="b")
HELD = {"a": A, "b": B}


def grace(seconds: float = 5.0) -> tuple[EmptyGrace, FakeClock]:
    clock = FakeClock()
    return EmptyGrace("/services/api", seconds, clock=clock), clock


def test_everyone_gone_holds_the_last_pool_until_the_grace_ends() -> None:
    hold, clock = grace()
    assert hold.hold(HELD, (), loaded=True) == 5.0
    clock.advance(3.0)
    assert hold.hold(HELD, (), loaded=True) == 2.0
    clock.advance(2.0)
    assert hold.hold(HELD, (), loaded=True) is None  # over: publish the empty pool


def test_a_partial_return_is_still_held_and_a_full_or_new_one_is_published() -> None:
    hold, _ = grace()
    assert hold.hold(HELD, (), loaded=True) is not None
    assert hold.hold(HELD, (A,), loaded=True) is not None  # one back of two: it would take all the load
    assert hold.hold(HELD, (A, B), loaded=True) is None
    c = ServiceInstance.parse("http://10.0.0.3:80", id="c")
    hold.end()
    assert hold.hold(HELD, (), loaded=True) is not None
    assert hold.hold(HELD, (c,), loaded=True) is None  # something new: not a blip


def test_no_hold_before_the_first_load_with_zero_grace_or_with_instances_left() -> None:
    assert grace()[0].hold(HELD, (), loaded=False) is None
    assert grace(0.0)[0].hold(HELD, (), loaded=True) is None
    assert grace()[0].hold(HELD, (A,), loaded=True) is None
    assert grace()[0].hold({}, (), loaded=True) is None


def test_departures_made_on_purpose_are_published_at_once() -> None:
    hold, _ = grace()
    hold.expect_departure("a")
    hold.expect_departure("b")
    assert hold.hold(HELD, (), loaded=True) is None
    assert hold.departing == frozenset()
    hold.expect_departure("a")
    assert hold.hold(HELD, (), loaded=True) is not None  # "b" went unasked: ride it out
    hold.keep_departing(["b"])
    assert hold.departing == frozenset()
