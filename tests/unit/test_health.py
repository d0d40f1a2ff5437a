"""HealthPolicy and OutlierDetector: the pure rules of passive health, on a fake clock."""

from __future__ import annotations

import dataclasses
import math

import pytest
from tests.unit.conftest import FakeClock

from zklb import ConfigurationError, HealthPolicy, PoolStats
from zklb.health import OutlierDetector

# -- HealthPolicy -------------------------------------------------------------------------------------


def test_defaults_are_those_documented() -> None:
    policy = HealthPolicy()
    assert policy.consecutive_failures == 5
    assert policy.base_ejection_time == 30.0
    assert policy.max_ejection_time == 300.0
    assert policy.max_ejection_percent == 10.0
    assert policy.panic_threshold == 50.0


def test_policy_is_frozen() -> None:
    policy = HealthPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.consecutive_failures = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"consecutive_failures": -3}, "consecutive_failures"),
        ({"consecutive_failures": 2.0}, "consecutive_failures"),
        ({"consecutive_failures": True}, "consecutive_failures"),
        ({"consecutive_failures": "5"}, "consecutive_failures"),
        ({"base_ejection_time": -1.0}, "base_ejection_time"),
        ({"base_ejection_time": math.inf}, "base_ejection_time"),
        ({"base_ejection_time": math.nan}, "base_ejection_time"),
        ({"base_ejection_time": True}, "base_ejection_time"),
        ({"base_ejection_time": "30"}, "base_ejection_time"),
        ({"max_ejection_time": -0.5}, "max_ejection_time"),
        ({"max_ejection_time": math.inf}, "max_ejection_time"),
        ({"max_ejection_time": 10.0, "base_ejection_time": 20.0}, "max_ejection_time"),
        ({"max_ejection_percent": -1.0}, "max_ejection_percent"),
        ({"max_ejection_percent": 100.5}, "max_ejection_percent"),
        ({"max_ejection_percent": math.nan}, "max_ejection_percent"),
        ({"max_ejection_percent": False}, "max_ejection_percent"),
        ({"panic_threshold": -0.1}, "panic_threshold"),
        ({"panic_threshold": 101}, "panic_threshold"),
        ({"panic_threshold": math.nan}, "panic_threshold"),
        ({"panic_threshold": "50"}, "panic_threshold"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_setting(
    settings: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        HealthPolicy(**settings)  # type: ignore[arg-type]


def test_max_below_base_names_both_settings() -> None:
    with pytest.raises(ConfigurationError) as caught:
        HealthPolicy(base_ejection_time=60.0, max_ejection_time=30.0)
    assert "max_ejection_time" in str(caught.value)
    assert "base_ejection_time" in str(caught.value)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="consecutive_failures"):
        HealthPolicy(consecutive_failures=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"consecutive_failures": 1},
        {"base_ejection_time": 0.0, "max_ejection_time": 0.0},
        {"base_ejection_time": 5, "max_ejection_time": 5},
        {"max_ejection_percent": 0.0, "panic_threshold": 0.0},
        {"max_ejection_percent": 100, "panic_threshold": 100},
    ],
)
def test_boundary_settings_are_accepted(settings: dict[str, float]) -> None:
    policy = HealthPolicy(**settings)  # type: ignore[arg-type]
    for name, value in settings.items():
        assert getattr(policy, name) == value


@pytest.mark.parametrize(
    ("times", "seconds"),
    [(0, 30.0), (1, 30.0), (2, 60.0), (3, 90.0), (9, 270.0), (10, 300.0), (11, 300.0), (1000, 300.0)],
)
def test_ejection_time_grows_linearly_up_to_the_cap(times: int, seconds: float) -> None:
    assert HealthPolicy().ejection_time(times) == seconds


def test_ejection_time_with_other_settings() -> None:
    policy = HealthPolicy(base_ejection_time=7.5, max_ejection_time=20.0)
    assert [policy.ejection_time(n) for n in (1, 2, 3, 4)] == [7.5, 15.0, 20.0, 20.0]


@pytest.mark.parametrize(
    ("percent", "pool_size", "allowed"),
    [
        (10.0, 0, 1),
        (10.0, 1, 1),
        (10.0, 3, 1),
        (10.0, 10, 1),
        (10.0, 19, 1),
        (10.0, 20, 2),
        (10.0, 100, 10),
        (0.0, 10, 1),  # always at least one
        (100.0, 4, 4),
        (50.0, 5, 2),
        (30.0, 10, 3),  # 10 * 30 / 100 is exactly 3: no float shortfall to 2
        (70.0, 10, 7),
        (33.0, 100, 33),
    ],
)
def test_max_ejected_is_the_share_rounded_down_but_at_least_one(
    percent: float, pool_size: int, allowed: int
) -> None:
    assert HealthPolicy(max_ejection_percent=percent).max_ejected(pool_size) == allowed


@pytest.mark.parametrize(
    ("threshold", "pool_size", "healthy", "panics"),
    [
        (50.0, 0, 0, False),  # an empty pool is not in panic
        (50.0, 4, 4, False),
        (50.0, 4, 2, False),  # exactly the threshold: not below it
        (50.0, 4, 1, True),
        (50.0, 4, 0, True),
        (50.0, 3, 1, True),
        (50.0, 3, 2, False),
        (0.0, 4, 0, False),  # a threshold of 0 turns panic off
        (100.0, 4, 3, True),
        (100.0, 4, 4, False),
    ],
)
def test_panics_below_the_threshold_only(
    threshold: float, pool_size: int, healthy: int, panics: bool
) -> None:
    assert HealthPolicy(panic_threshold=threshold).panics(pool_size, healthy) is panics


def test_pool_stats_is_frozen() -> None:
    stats = PoolStats(size=3, healthy=2, ejected=1, draining=0, panic=False, version=7, connection="static")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.size = 4  # type: ignore[misc]


# -- OutlierDetector ----------------------------------------------------------------------------------


def detector(clock: FakeClock, **settings: float) -> OutlierDetector:
    return OutlierDetector(HealthPolicy(**settings), clock)  # type: ignore[arg-type]


def test_ejects_after_the_configured_consecutive_failures_not_before() -> None:
    clock = FakeClock()
    d = detector(clock)
    for consecutive in range(1, 5):
        assert d.on_failure("a", consecutive, 10) is False
    assert d.ejected == {}
    assert d.next_return == math.inf
    assert d.times_ejected("a") == 0
    assert d.on_failure("a", 5, 10) is True
    assert d.ejected == {"a": 1030.0}
    assert d.next_return == 1030.0
    assert d.times_ejected("a") == 1
    assert d.now() == 1000.0


def test_consecutive_failures_setting_is_honoured() -> None:
    d = detector(FakeClock(), consecutive_failures=2)
    assert d.on_failure("a", 1, 10) is False
    assert d.on_failure("a", 2, 10) is True


def test_a_late_failure_of_an_ejected_instance_changes_nothing() -> None:
    clock = FakeClock()
    d = detector(clock)
    assert d.on_failure("a", 5, 10)
    clock.advance(10)
    assert d.on_failure("a", 6, 10) is False
    assert d.ejected == {"a": 1030.0}
    assert d.times_ejected("a") == 1


def test_expiry_brings_it_back_on_probation_exactly_on_time() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    clock.advance(29.999)
    assert d.expire() == []
    assert "a" in d.ejected
    assert d.probation == set()
    clock.advance(0.001)
    assert d.expire() == ["a"]
    assert d.ejected == {}
    assert d.probation == {"a"}
    assert d.next_return == math.inf
    assert d.expire() == []  # nothing left to bring back


def test_expire_takes_an_explicit_reading() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    assert d.expire(now=1029.0) == []
    assert d.expire(now=1030.0) == ["a"]


def test_one_failure_on_probation_ejects_again_for_longer() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    clock.advance(30)
    d.expire()
    assert d.on_failure("a", 6, 10) is True  # the count is irrelevant on probation
    assert d.ejected == {"a": 1090.0}  # 1030 + 2 * 30
    assert d.times_ejected("a") == 2
    assert d.probation == set()
    clock.advance(60)
    assert d.expire() == ["a"]
    assert d.on_failure("a", 1, 10) is True
    assert d.ejected == {"a": clock.now + 90.0}
    assert d.times_ejected("a") == 3


def test_flapping_ejections_are_capped_at_max_ejection_time() -> None:
    clock = FakeClock()
    d = detector(clock, base_ejection_time=10.0, max_ejection_time=25.0)
    lengths = []
    for _ in range(5):
        assert d.on_failure("a", 5, 10)
        lengths.append(d.ejected["a"] - clock.now)
        clock.advance(d.ejected["a"] - clock.now)
        assert d.expire() == ["a"]
    assert lengths == [10.0, 20.0, 25.0, 25.0, 25.0]
    assert d.times_ejected("a") == 5


def test_success_ends_probation() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    clock.advance(30)
    d.expire()
    d.on_success("a")
    assert d.probation == set()
    assert d.on_failure("a", 1, 10) is False  # back to needing five in a row
    assert d.on_failure("a", 5, 10) is True
    assert d.times_ejected("a") == 2  # the count of ejections is kept
    assert d.ejected["a"] == clock.now + 60.0


def test_success_of_an_instance_never_ejected_is_harmless() -> None:
    d = detector(FakeClock())
    d.on_success("never-seen")
    assert d.probation == set()
    assert d.ejected == {}


def test_at_most_max_ejection_percent_are_ejected_at_once() -> None:
    clock = FakeClock()
    d = detector(clock)  # 10 %
    assert d.on_failure("a", 5, 20) is True
    assert d.on_failure("b", 5, 20) is True
    assert d.on_failure("c", 5, 20) is False  # 2 of 20 already out
    assert set(d.ejected) == {"a", "b"}
    assert d.times_ejected("c") == 0
    assert d.on_failure("c", 9, 20) is False
    clock.advance(30)
    assert sorted(d.expire()) == ["a", "b"]
    assert d.on_failure("c", 10, 20) is True  # room again: its run of failures still counts


def test_at_least_one_may_be_ejected_from_a_small_pool() -> None:
    d = detector(FakeClock())
    assert d.on_failure("a", 5, 3) is True
    assert d.on_failure("b", 5, 3) is False


def test_probation_does_not_bypass_the_ejection_limit() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 3)
    clock.advance(30)
    d.expire()
    assert d.on_failure("b", 5, 3) is True
    assert d.on_failure("a", 6, 3) is False  # one of 3 may be out, and b is
    assert d.probation == {"a"}  # still on probation: its next failure with room ejects it


def test_next_return_is_the_earliest_deadline() -> None:
    clock = FakeClock()
    d = detector(clock, max_ejection_percent=100.0)
    d.on_failure("a", 5, 4)
    clock.advance(10)
    d.on_failure("b", 5, 4)
    assert d.next_return == 1030.0
    clock.advance(20)
    assert d.expire() == ["a"]
    assert d.next_return == 1040.0
    clock.advance(10)
    assert d.expire() == ["b"]
    assert d.next_return == math.inf
    assert d.probation == {"a", "b"}


def test_expire_before_next_return_does_no_work() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    d.ejected["a"] = 0.0  # would be due, but next_return says nothing is: expire trusts next_return
    assert d.expire() == []
    assert "a" in d.ejected


def test_retain_forgets_departed_instances() -> None:
    clock = FakeClock()
    d = detector(clock, max_ejection_percent=100.0)
    d.on_failure("a", 5, 4)
    clock.advance(5)
    d.on_failure("b", 5, 4)
    d.on_failure("c", 5, 4)
    clock.advance(30)  # a, b and c back; eject b and c again
    d.expire()
    d.on_failure("b", 1, 4)
    d.on_failure("c", 1, 4)
    assert d.probation == {"a"}
    assert d.next_return == clock.now + 60.0
    d.retain({"a", "d"})
    assert d.ejected == {}
    assert d.probation == {"a"}
    assert d.next_return == math.inf
    assert d.times_ejected("b") == 0
    assert d.times_ejected("c") == 0
    assert d.times_ejected("a") == 1
    d.retain(set())
    assert d.probation == set()
    assert d.times_ejected("a") == 0


def test_retain_recomputes_next_return_from_those_left() -> None:
    clock = FakeClock()
    d = detector(clock, max_ejection_percent=100.0)
    d.on_failure("a", 5, 4)
    clock.advance(10)
    d.on_failure("b", 5, 4)
    d.retain({"b"})
    assert d.ejected == {"b": 1040.0}
    assert d.next_return == 1040.0


def test_an_instance_that_rejoins_starts_over() -> None:
    clock = FakeClock()
    d = detector(clock)
    d.on_failure("a", 5, 10)
    d.retain(())
    assert d.on_failure("a", 5, 10) is True
    assert d.times_ejected("a") == 1
    assert d.ejected["a"] == clock.now + 30.0
