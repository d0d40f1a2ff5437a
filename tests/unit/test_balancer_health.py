"""Passive health in `LoadBalancer`: ejection, probation, panic and drain (static pool, fake clock)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable

import pytest
from tests.unit.conftest import FakeClock

from zklb import (
    HealthPolicy,
    LoadBalancer,
    NoServerAvailable,
    PoolStats,
    ServiceInstance,
    strategy_names,
)

STRATEGIES = strategy_names()


class Boom(Exception):
    """What a failed request raises in these tests."""


def server(name: str, port: int, *, weight: int = 1, status: str | None = None) -> ServiceInstance:
    metadata = {} if status is None else {"instance_status": status}
    url = f"http://10.0.0.{port % 250}:{port}"
    return ServiceInstance.parse(url, id=name, weight=weight, metadata=metadata)


def pool(*names: str) -> list[ServiceInstance]:
    return [server(name, 8000 + i) for i, name in enumerate(names)]


def balancer(
    servers: Iterable[ServiceInstance],
    clock: FakeClock,
    *,
    strategy: str = "round_robin",
    health: HealthPolicy | None = None,
) -> LoadBalancer:
    return LoadBalancer.static(servers, strategy=strategy, health=health or HealthPolicy(), clock=clock)


def fail(lb: LoadBalancer, name: str, times: int = 5) -> None:
    """Report ``times`` failures of instance ``name`` (outside any lease)."""
    target = lb.membership.by_id[name]
    for _ in range(times):
        lb.report(target, success=False)


def picked_by_get_server(lb: LoadBalancer, count: int = 60) -> Counter[str]:
    return Counter(lb.get_server().id for _ in range(count))


def picked_by_acquire(lb: LoadBalancer, count: int = 60, exclude: Iterable[str] = ()) -> Counter[str]:
    excluded = tuple(exclude)
    seen: Counter[str] = Counter()
    for _ in range(count):
        with lb.acquire(exclude=excluded) as picked:
            seen[picked.id] += 1
    return seen


def ejected(lb: LoadBalancer) -> set[str]:
    return {key for key, stats in lb.stats().items() if stats.ejected}


# -- every strategy skips an ejected instance -------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_skips_an_ejected_instance(strategy: str) -> None:
    clock = FakeClock()
    # The instance to eject is the heaviest, so weighted strategies would pick it most.
    servers = [server("a", 8001, weight=8), server("b", 8002), server("c", 8003)]
    lb = balancer(servers, clock, strategy=strategy)
    assert set(picked_by_get_server(lb, 200)) == {"a", "b", "c"}
    fail(lb, "a")
    assert ejected(lb) == {"a"}
    assert set(picked_by_get_server(lb, 200)) <= {"b", "c"}
    assert set(picked_by_acquire(lb, 200)) <= {"b", "c"}
    assert set(picked_by_acquire(lb, 50, exclude=["b"])) == {"c"}
    assert set(picked_by_acquire(lb, 50, exclude=["c"])) == {"b"}
    assert all(stats.in_flight == 0 for stats in lb.stats().values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_retry_falls_back_to_an_ejected_instance_rather_than_none(strategy: str) -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock, strategy=strategy)
    fail(lb, "a")
    with lb.acquire(exclude=["b", "c"]) as picked:
        assert picked.id == "a"
    with pytest.raises(NoServerAvailable):
        lb.acquire(exclude=["a", "b", "c"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ejection_survives_a_strategy_switch(strategy: str) -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    fail(lb, "a")
    lb.set_strategy(strategy)
    assert set(picked_by_get_server(lb)) <= {"b", "c"}
    assert set(picked_by_acquire(lb)) <= {"b", "c"}
    assert lb.stats()["a"].times_ejected == 1


def test_least_connections_skips_an_ejected_idle_instance_at_the_lowest_load() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock, strategy="least_connections")
    fail(lb, "a")
    held = [lb.acquire() for _ in range(4)]
    try:
        assert Counter(lease.server.id for lease in held) == {"b": 2, "c": 2}
        in_flight = {key: stats.in_flight for key, stats in lb.stats().items()}
        assert in_flight == {"a": 0, "b": 2, "c": 2}  # a is the least loaded by far
        assert set(picked_by_get_server(lb, 50)) <= {"b", "c"}
        more = [lb.acquire() for _ in range(6)]
        assert Counter(lease.server.id for lease in more) == {"b": 3, "c": 3}
        for lease in more:
            lease.release()
    finally:
        for lease in held:
            lease.release()
    assert all(stats.in_flight == 0 for stats in lb.stats().values())


def test_least_connections_stays_fair_around_a_skipped_instance() -> None:
    # One request at a time, one of four ejected: the other three take equal turns (re-picking past
    # the ejected one once left one of them with nothing and another with double).
    lb = balancer(pool("a", "b", "c", "d"), FakeClock(), strategy="least_connections")
    fail(lb, "a")
    assert picked_by_acquire(lb, 300) == {"b": 100, "c": 100, "d": 100}


def test_least_connections_gets_a_returning_instance_back_as_the_least_loaded() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock, strategy="least_connections")
    fail(lb, "a")
    held = [lb.acquire() for _ in range(6)]  # b and c busy, a idle but ejected
    assert {lease.server.id for lease in held} == {"b", "c"}
    clock.advance(30.0)  # a's ejection is over
    try:
        # Whatever the picker counted on a while it was skipped is gone: it is the least loaded again.
        back = [lb.acquire() for _ in range(3)]
        assert [lease.server.id for lease in back] == ["a", "a", "a"]
        for lease in back:
            lease.release()
    finally:
        for lease in held:
            lease.release()
    assert all(stats.in_flight == 0 for stats in lb.stats().values())
    assert picked_by_acquire(lb, 30) == {"a": 10, "b": 10, "c": 10}


# -- what ejects an instance --------------------------------------------------------------------------


def test_exceptions_inside_acquire_eject_after_five_in_a_row() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    failures = 0
    for _ in range(100):
        with contextlib.suppress(Boom), lb.acquire() as picked:
            if picked.id == "a":
                failures += 1
                raise Boom
        if failures == 4:
            assert ejected(lb) == set()
            assert lb.stats()["a"].consecutive_failures == 4
        if failures == 5:
            break
    assert failures == 5
    stats = lb.stats()["a"]
    assert stats.ejected
    assert stats.ejected_until == 1030.0
    assert stats.times_ejected == 1
    assert stats.failures == 5
    assert lb.pool_stats().ejected == 1
    assert set(picked_by_acquire(lb)) == {"b", "c"}


def test_release_false_ejects() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    for n in range(1, 6):
        lease = lb.acquire(exclude=["b", "c"])
        assert lease.server.id == "a"
        assert ejected(lb) == set()
        lease.release(False)
        assert lb.stats()["a"].consecutive_failures == n
    assert ejected(lb) == {"a"}
    assert lb.stats()["a"].in_flight == 0


def test_report_false_outside_a_lease_ejects() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    a = lb.membership.by_id["a"]
    fail(lb, "a", 4)
    assert ejected(lb) == set()
    lb.report(a, success=False)
    assert ejected(lb) == {"a"}
    assert lb.stats()["a"].in_flight == 0  # a report outside a lease counts no request in flight


def test_report_false_inside_a_lease_counts_once_on_exit() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    for n in range(1, 6):
        with lb.acquire(exclude=["b", "c"]) as picked:
            lb.report(picked, success=False)
            lb.report(picked, success=False)  # sets the lease's outcome: still one failure
        assert lb.stats()["a"].consecutive_failures == n
    assert ejected(lb) == {"a"}


def test_a_success_resets_the_run_of_failures() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    a = lb.membership.by_id["a"]
    fail(lb, "a", 4)
    lb.report(a, success=True)
    fail(lb, "a", 4)
    assert ejected(lb) == set()
    assert lb.stats()["a"].consecutive_failures == 4
    fail(lb, "a", 1)
    assert ejected(lb) == {"a"}


def test_the_consecutive_failures_setting_is_honoured() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock, health=HealthPolicy(consecutive_failures=2))
    fail(lb, "a", 1)
    assert ejected(lb) == set()
    fail(lb, "a", 1)
    assert ejected(lb) == {"a"}


def test_health_none_never_ejects() -> None:
    clock = FakeClock()
    lb = LoadBalancer.static(pool("a", "b", "c"), health=None, clock=clock)
    fail(lb, "a", 100)
    for _ in range(10):
        with contextlib.suppress(Boom), lb.acquire():
            raise Boom
    stats = lb.stats()["a"]
    assert stats.consecutive_failures >= 100
    assert (stats.ejected, stats.ejected_until, stats.times_ejected) == (False, None, 0)
    assert set(picked_by_get_server(lb)) == {"a", "b", "c"}
    assert lb.pool_stats() == PoolStats(
        size=3, healthy=3, ejected=0, draining=0, panic=False, version=1, connection="static"
    )


def test_health_must_be_a_policy() -> None:
    with pytest.raises(TypeError, match="HealthPolicy"):
        LoadBalancer.static(pool("a"), health=5)  # type: ignore[arg-type]


def test_only_max_ejection_percent_of_the_pool_is_ejected() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)  # 10 % of 3: one instance
    fail(lb, "a")
    fail(lb, "b")
    assert ejected(lb) == {"a"}
    assert set(picked_by_get_server(lb)) == {"b", "c"}


# -- probation ----------------------------------------------------------------------------------------


def test_an_ejected_instance_comes_back_after_its_time_on_probation() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    fail(lb, "a")
    clock.advance(29.9)
    assert set(picked_by_get_server(lb)) == {"b", "c"}
    clock.advance(0.1)
    assert set(picked_by_get_server(lb)) == {"a", "b", "c"}
    stats = lb.stats()["a"]
    assert (stats.ejected, stats.ejected_until, stats.times_ejected) == (False, None, 1)
    assert lb.pool_stats().ejected == 0
    assert lb.pool_stats().healthy == 3

    fail(lb, "a", 1)  # on probation: one failure is enough
    stats = lb.stats()["a"]
    assert stats.ejected
    assert stats.times_ejected == 2
    assert stats.ejected_until == clock.now + 60.0  # twice the base time
    assert set(picked_by_acquire(lb)) == {"b", "c"}


def test_an_ejected_instance_comes_back_through_acquire() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    fail(lb, "a")
    clock.advance(30)
    assert set(picked_by_acquire(lb)) == {"a", "b", "c"}


def test_a_success_on_probation_ends_it() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    a = lb.membership.by_id["a"]
    fail(lb, "a")
    clock.advance(30)
    with lb.acquire(exclude=["b", "c"]) as picked:
        assert picked.id == "a"
    fail(lb, "a", 4)
    assert ejected(lb) == set()
    lb.report(a, success=False)
    assert ejected(lb) == {"a"}
    assert lb.stats()["a"].times_ejected == 2


def test_ejection_times_grow_and_are_capped() -> None:
    clock = FakeClock()
    policy = HealthPolicy(base_ejection_time=10.0, max_ejection_time=25.0)
    lb = balancer(pool("a", "b", "c"), clock, health=policy)
    lengths = []
    fail(lb, "a")
    for _ in range(4):
        until = lb.stats()["a"].ejected_until
        assert until is not None
        lengths.append(until - clock.now)
        clock.advance(until - clock.now)
        assert lb.get_server() is not None  # brings it back
        assert not lb.stats()["a"].ejected
        fail(lb, "a", 1)
    assert lengths == [10.0, 20.0, 25.0, 25.0]
    assert lb.stats()["a"].times_ejected == 5


# -- the hot path -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_nothing_skipped_the_pick_is_the_pickers_own(strategy: str) -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock, strategy=strategy)
    picker = lb._picker
    assert picker is not None
    assert lb._pick == picker.pick
    fail(lb, "a")
    assert lb._pick != picker.pick  # a skipping wrapper while a is out
    clock.advance(30)
    lb.get_server()
    assert lb._pick == picker.pick  # back on probation: nothing skipped, the fast path again
    assert lb._picker is picker  # ejection and return rebuilt nothing


# -- panic --------------------------------------------------------------------------------------------


def test_panic_picks_the_whole_pool_and_is_logged_once_per_entry(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="zklb.balancer")
    clock = FakeClock()
    policy = HealthPolicy(max_ejection_percent=100.0, panic_threshold=50.0)
    lb = balancer(pool("a", "b", "c", "d"), clock, health=policy)

    def panic_records() -> int:
        return sum("panic" in record.getMessage() for record in caplog.records)

    fail(lb, "a")
    fail(lb, "b")
    stats = lb.pool_stats()
    assert (stats.healthy, stats.ejected, stats.panic) == (2, 2, False)  # 50 % healthy: not below
    assert set(picked_by_get_server(lb)) == {"c", "d"}
    assert panic_records() == 0

    fail(lb, "c")
    stats = lb.pool_stats()
    assert (stats.size, stats.healthy, stats.ejected, stats.panic) == (4, 1, 3, True)
    assert set(picked_by_get_server(lb)) == {"a", "b", "c", "d"}
    assert set(picked_by_acquire(lb)) == {"a", "b", "c", "d"}
    assert panic_records() == 1
    assert ejected(lb) == {"a", "b", "c"}  # still ejected, only picked anyway

    fail(lb, "d")  # deeper into panic: no new panic notice
    assert lb.pool_stats().healthy == 0
    assert lb.pool_stats().panic
    assert set(picked_by_get_server(lb)) == {"a", "b", "c", "d"}
    assert panic_records() == 1

    clock.advance(30)
    stats = lb.pool_stats()
    assert (stats.healthy, stats.ejected, stats.panic) == (4, 0, False)

    fail(lb, "a", 1)  # on probation, one failure each
    fail(lb, "b", 1)
    fail(lb, "c", 1)
    assert lb.pool_stats().panic
    assert panic_records() == 2  # a second entry, a second notice


def test_panic_with_a_threshold_of_zero_never_happens() -> None:
    clock = FakeClock()
    policy = HealthPolicy(max_ejection_percent=100.0, panic_threshold=0.0)
    lb = balancer(pool("a", "b", "c"), clock, health=policy)
    fail(lb, "a")
    fail(lb, "b")
    assert not lb.pool_stats().panic
    assert set(picked_by_get_server(lb)) == {"c"}
    fail(lb, "c")
    assert lb.pool_stats().ejected == 3
    assert not lb.pool_stats().panic
    assert len(picked_by_get_server(lb)) >= 1  # everything ejected: still a server rather than none


def test_leaving_panic_on_the_hot_path_skips_the_still_ejected() -> None:
    """When ejections end, get_server() and acquire() alone must notice that the panic is over.

    a is ejected at t=0 (back at 30), b and c at t=10 (back at 40): panic from t=10 (1 of 4 healthy).
    At t=31, a is back: 2 of 4 healthy is not below 50 %, so b and c must be skipped again, without
    anybody having called stats() or pool_stats() in between.
    """
    clock = FakeClock()
    policy = HealthPolicy(max_ejection_percent=100.0, panic_threshold=50.0)
    lb = balancer(pool("a", "b", "c", "d"), clock, health=policy)
    fail(lb, "a")
    clock.advance(10)
    fail(lb, "b")
    fail(lb, "c")
    assert set(picked_by_get_server(lb)) == {"a", "b", "c", "d"}  # panic
    clock.advance(21)
    assert set(picked_by_get_server(lb)) == {"a", "d"}
    assert set(picked_by_acquire(lb)) == {"a", "d"}
    assert not lb.pool_stats().panic


# -- pool_stats ---------------------------------------------------------------------------------------


def test_pool_stats_fields() -> None:
    clock = FakeClock()
    servers = [*pool("a", "b", "c", "d"), server("e", 8009, status="OUT_OF_SERVICE")]
    lb = balancer(servers, clock, health=HealthPolicy(max_ejection_percent=50.0))
    assert lb.pool_stats() == PoolStats(
        size=5, healthy=4, ejected=0, draining=1, panic=False, version=1, connection="static"
    )
    fail(lb, "a")
    assert lb.pool_stats() == PoolStats(
        size=5, healthy=3, ejected=1, draining=1, panic=False, version=1, connection="static"
    )
    fail(lb, "b")
    assert lb.pool_stats() == PoolStats(
        size=5, healthy=2, ejected=2, draining=1, panic=False, version=1, connection="static"
    )
    clock.advance(30)
    assert lb.pool_stats() == PoolStats(
        size=5, healthy=4, ejected=0, draining=1, panic=False, version=1, connection="static"
    )


def test_pool_stats_of_an_empty_static_pool() -> None:
    lb = LoadBalancer.static([], clock=FakeClock())
    assert lb.pool_stats() == PoolStats(
        size=0, healthy=0, ejected=0, draining=0, panic=False, version=1, connection="static"
    )


def test_stats_report_ejection_state() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    before = lb.stats()["a"]
    assert (before.ejected, before.ejected_until, before.times_ejected) == (False, None, 0)
    fail(lb, "a")
    after = lb.stats()["a"]
    assert (after.ejected, after.ejected_until, after.times_ejected) == (True, 1030.0, 1)
    assert (after.requests, after.failures, after.consecutive_failures) == (5, 5, 5)
    assert not lb.stats()["b"].ejected


# -- drain --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_draining_instances_are_never_picked_while_others_exist(strategy: str) -> None:
    clock = FakeClock()
    servers = [
        server("a", 8001, weight=8, status="OUT_OF_SERVICE"),
        server("b", 8002),
        server("c", 8003),
        server("d", 8004, status="DOWN"),
    ]
    lb = balancer(servers, clock, strategy=strategy)
    assert set(picked_by_get_server(lb, 200)) <= {"b", "c"}
    assert set(picked_by_acquire(lb, 200)) <= {"b", "c"}
    assert set(picked_by_acquire(lb, 20, exclude=["b"])) == {"c"}
    stats = lb.pool_stats()
    assert (stats.size, stats.healthy, stats.draining, stats.ejected, stats.panic) == (4, 2, 2, 0, False)


def test_instance_status_is_read_case_insensitively() -> None:
    clock = FakeClock()
    lb = balancer([server("a", 8001, status="out_of_service"), server("b", 8002)], clock)
    assert set(picked_by_get_server(lb)) == {"b"}
    assert lb.pool_stats().draining == 1


def test_up_is_not_draining() -> None:
    clock = FakeClock()
    lb = balancer([server("a", 8001, status="UP"), server("b", 8002)], clock)
    assert set(picked_by_get_server(lb)) == {"a", "b"}
    assert lb.pool_stats().draining == 0


def test_a_draining_instance_is_picked_by_a_retry_with_nothing_else_left() -> None:
    clock = FakeClock()
    lb = balancer([server("a", 8001, status="OUT_OF_SERVICE"), server("b", 8002)], clock)
    with lb.acquire(exclude=["b"]) as picked:
        assert picked.id == "a"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_when_everything_is_draining_everything_is_picked(strategy: str) -> None:
    clock = FakeClock()
    servers = [server(name, 8001 + i, status="OUT_OF_SERVICE") for i, name in enumerate("abc")]
    lb = balancer(servers, clock, strategy=strategy)
    assert set(picked_by_get_server(lb, 200)) == {"a", "b", "c"}
    assert set(picked_by_acquire(lb, 200)) == {"a", "b", "c"}
    stats = lb.pool_stats()
    assert (stats.size, stats.healthy, stats.draining, stats.panic) == (3, 0, 3, False)
    assert lb.has_server()


def test_draining_and_ejected_are_both_skipped() -> None:
    clock = FakeClock()
    servers = [server("a", 8001, status="OUT_OF_SERVICE"), *pool("b", "c", "d")]
    lb = balancer(servers, clock)
    fail(lb, "b")
    assert set(picked_by_get_server(lb)) == {"c", "d"}
    assert set(picked_by_acquire(lb)) == {"c", "d"}
    stats = lb.pool_stats()
    assert (stats.healthy, stats.ejected, stats.draining, stats.panic) == (2, 1, 1, False)


# -- has_server ---------------------------------------------------------------------------------------


def test_has_server() -> None:
    clock = FakeClock()
    lb = balancer(pool("a", "b"), clock)
    a, b = lb.membership.by_id["a"], lb.membership.by_id["b"]
    assert lb.has_server()
    assert lb.has_server(exclude=["a"])
    assert lb.has_server(exclude=[b])
    assert not lb.has_server(exclude=["a", "b"])
    assert not lb.has_server(exclude=[a, b])
    assert not lb.has_server(exclude=["a", b])
    assert lb.has_server(exclude=["not-a-member"])


def test_has_server_counts_ejected_and_draining_as_acquire_does() -> None:
    clock = FakeClock()
    lb = balancer([server("a", 8001, status="OUT_OF_SERVICE"), *pool("b", "c")], clock)
    fail(lb, "b")
    assert lb.has_server(exclude=["c"])  # a and b are left: draining and ejected, yet pickable
    with lb.acquire(exclude=["c"]) as picked:
        assert picked.id in {"a", "b"}
    assert not lb.has_server(exclude=["a", "b", "c"])


def test_has_server_of_an_empty_pool_is_false() -> None:
    lb = LoadBalancer.static([], clock=FakeClock())
    assert not lb.has_server()
    with pytest.raises(NoServerAvailable):
        lb.get_server()


def test_has_server_is_false_once_closed() -> None:
    lb = balancer(pool("a", "b"), FakeClock())
    lb.close()
    assert not lb.has_server()  # a pick now raises ClosedError


def test_a_pool_of_one_is_never_left_without_a_server() -> None:
    clock = FakeClock()
    lb = balancer(pool("a"), clock)  # the defaults: one may be ejected, and 0 of 1 healthy is panic
    fail(lb, "a")
    assert ejected(lb) == {"a"}
    assert lb.pool_stats().panic
    assert lb.get_server().id == "a"
    with lb.acquire() as picked:
        assert picked.id == "a"
    assert lb.has_server()


def test_ejection_and_return_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zklb.balancer")
    clock = FakeClock()
    lb = balancer(pool("a", "b", "c"), clock)
    fail(lb, "a")
    # An ejection is news (INFO), not trouble: only panic is a warning.
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    message = caplog.records[0].getMessage()
    assert "ejected instance a (http://10.0.0.0:8000) for 30 s after 5 failures in a row" in message
    assert message.endswith("(ejection 1)")
    caplog.clear()
    clock.advance(30)
    lb.get_server()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "instance a back from ejection, on probation" in infos[0]


def test_a_success_of_a_request_sent_before_the_failures_began_does_not_reset_them() -> None:
    # A backend dies with slow requests in flight: one of them answered just before the crash, but its
    # success is recorded after the first failures. Resetting the streak there delayed the ejection, and
    # the extra failed attempts could exhaust the retry budget (a lost GET in the killed-backend test).
    lb = balancer(pool("a", "b", "c"), FakeClock())
    a = lb.membership.by_id["a"]
    fail(lb, "a", 4)
    lb.report(a, success=True, latency=3600.0)  # sent an hour ago: before these failures
    assert lb.stats()["a"].consecutive_failures == 4
    fail(lb, "a", 1)
    assert lb.stats()["a"].ejected


def test_a_success_of_a_request_sent_after_the_failures_began_resets_them() -> None:
    lb = balancer(pool("a", "b", "c"), FakeClock())
    a = lb.membership.by_id["a"]
    fail(lb, "a", 4)
    lb.report(a, success=True, latency=0.0)  # sent just now: the server answers again
    assert lb.stats()["a"].consecutive_failures == 0
    fail(lb, "a", 1)
    assert not lb.stats()["a"].ejected
