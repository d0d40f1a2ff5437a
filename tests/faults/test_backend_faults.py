"""Faults of the backends, under HTTP load through zklb's transports: a backend killed, then restarted; a
backend that flaps. Passive health ejects the failing one, brings it back on probation after its ejection
time, and keeps a flapping one out longer each time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from tests.faults.conftest import Backend, HttpLoad, StartBackends, stays

import zklb
from zklb import LoadBalancer
from zklb.testing import wait_until

MakeLb = Callable[..., LoadBalancer]
DEFAULT_CONSECUTIVE_FAILURES = 5  # HealthPolicy's documented default


@pytest.mark.parametrize("via", ["httpx", "requests"])
@pytest.mark.parametrize(
    ("workers", "path", "total"),
    # Fast requests, and slow ones with more callers: then a dozen requests are on the victim when it
    # dies, all failing at once, more than the retry budget's minimum of 3 concurrent retries.
    [(6, "/", 300), (24, "/slow?seconds=0.1", 480)],
    ids=["6-fast", "24-slow"],
)
def test_killed_backend_under_load_loses_no_get_and_is_ejected(  # noqa: PLR0917 - fixtures
    backends: StartBackends,
    http_lb: MakeLb,
    via: str,
    workers: int,
    path: str,
    total: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers = backends(3)
    lb = http_lb(servers)  # the default health policy, and the transports' default settings
    victim = servers[0]
    with HttpLoad(lb, threads=workers, total=total, via=via, path=path) as load:
        wait_until(lambda: load.done() >= total // 3, 30, "a third of the GETs")
        victim.kill()
        load.wait(60)
    stats = lb.stats()
    dead = stats[victim.instance_id]
    with capsys.disabled():
        print(
            f"\n[{via}, {workers} callers, killed backend] {total} GETs, {len(load.failures)} failed; "
            f"served per backend {servers.counts()}; failed attempts on the killed one: {dead.failures}; "
            f"{dead}"
        )
    assert load.failures == [], load.failures[:5]
    assert load.done() == total
    assert all(s.in_flight == 0 for s in stats.values())
    # Ejected as soon as it failed enough: beyond the failures that eject it, only requests already on
    # their way to it (at most one per worker) failed there, not a share of everything sent afterwards.
    assert dead.failures <= DEFAULT_CONSECUTIVE_FAILURES + workers, dead
    assert dead.ejected
    assert dead.times_ejected == 1
    assert dead.ejected_until is not None and dead.ejected_until > time.monotonic()
    pool = lb.pool_stats()
    assert (pool.size, pool.healthy, pool.ejected, pool.panic) == (3, 2, 1, False), pool


def test_ejected_backend_comes_back_after_its_ejection_time_once_restarted(
    backends: StartBackends, http_lb: MakeLb, restart_backend: Callable[[Backend], Backend]
) -> None:
    servers = backends(3)
    lb = http_lb(servers, health=zklb.HealthPolicy(base_ejection_time=2.0))
    victim = servers[0]
    key = victim.instance_id
    with HttpLoad(lb, threads=2, deadline=60) as load:
        wait_until(lambda: load.done() >= 30, 10, "GETs before the kill")
        victim.kill()
        wait_until(lambda: lb.stats()[key].ejected, 10, "the killed backend to be ejected")
        until = lb.stats()[key].ejected_until
        assert until is not None
        again = restart_backend(victim)  # answering again at the same address, still ejected
        stays(lambda: again.count == 0, until - time.monotonic() - 0.1, "no GET to it while ejected")
        wait_until(lambda: again.count >= 5, until - time.monotonic() + 5, "GETs to the restarted backend")
        assert time.monotonic() >= until
        back = lb.stats()[key]
        assert not back.ejected
        assert back.times_ejected == 1  # its first request after the ejection succeeded: not ejected again
        assert back.ejected_until is None or back.ejected_until <= time.monotonic()
        assert lb.pool_stats().healthy == 3
    assert load.failures == [], load.failures[:5]


def test_flapping_backend_is_ejected_for_longer_each_time(
    backends: StartBackends, http_lb: MakeLb, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = zklb.HealthPolicy(consecutive_failures=5, base_ejection_time=0.5, max_ejection_time=1.2)
    servers = backends(3)
    lb = http_lb(servers, health=policy)
    flappy = servers[0]
    key = flappy.instance_id
    workers = 2

    def ejection(number: int) -> tuple[float, float, float]:
        """Wait for the ``number``-th ejection: (last poll before it was seen, when seen, ejected_until)."""
        deadline = time.monotonic() + 15
        previous = time.monotonic()
        while True:
            stats = lb.stats()[key]
            now = time.monotonic()
            if stats.times_ejected >= number:
                assert stats.times_ejected == number, stats
                assert stats.ejected and stats.ejected_until is not None, stats
                return previous, now, stats.ejected_until
            assert now < deadline, f"no ejection #{number} within 15 s: {stats}"
            previous = now
            time.sleep(0.005)

    windows: list[tuple[float, float, float]] = []
    with HttpLoad(lb, threads=workers, deadline=60):
        wait_until(lambda: flappy.count >= 5, 10, "GETs to the backend while it is fine")
        flappy.status = 503  # down
        windows.append(ejection(1))
        seen = flappy.count
        # Nothing is sent to it while ejected, but what was already on its way.
        stays(lambda: flappy.count <= seen + workers, windows[0][2] - time.monotonic() - 0.05, "ejected")
        returned = flappy.count
        # Back on probation while still failing: its next failure ejects it again, not five more.
        windows.append(ejection(2))
        assert flappy.count - returned <= 1 + workers, "probation allowed more than one failure"
        flappy.status = 200  # up again: after this ejection it serves, which ends its probation
        wait_until(lambda: not lb.stats()[key].ejected, windows[1][2] - time.monotonic() + 5, "its return")
        serving = flappy.count
        wait_until(lambda: flappy.count >= serving + 10, 10, "GETs served by it again")
        flappy.status = 503  # and down again
        windows.append(ejection(3))
        flappy.status = 200

    # Each ejection lasted base x times ejected, capped: 0.5 s, 1.0 s, then 1.2 s instead of 1.5 s.
    expected = [0.5, 1.0, 1.2]
    with capsys.disabled():
        lasted = ", ".join(f"{until - seen:.2f}-{until - before:.2f} s" for before, seen, until in windows)
        print(f"\n[flapping backend] ejections lasted {lasted}; expected {expected}")
    for number, ((before, seen_at, until), want) in enumerate(zip(windows, expected, strict=True), 1):
        shortest, longest = until - seen_at, until - before  # it began between the two polls
        assert shortest - 0.05 <= want <= longest + 0.05, (
            f"ejection #{number} lasted between {shortest:.3f} and {longest:.3f} s, not {want} s"
        )
