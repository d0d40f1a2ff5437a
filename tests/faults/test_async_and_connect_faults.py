"""The asyncio lifecycle never blocks the loop, and connect() copes with a ZooKeeper that is away.

A ticker task records the gaps between its ticks while the operation runs: an operation that blocked
the loop for its duration shows as one gap that long. Bounds are generous (the machine is shared).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import pytest
from kazoo.client import KazooClient
from tests.unit.test_balancer_lifecycle import refused_address

import zklb
from zklb import ClosedError, LoadBalancer, Registry, RegistryError
from zklb.testing import wait_until

T = TypeVar("T")

#: Longest tick gap allowed: far below every operation's duration below, far above a busy machine's jitter.
MAX_GAP = 0.5


@pytest.fixture
def silent_address() -> Iterator[str]:
    """A ZooKeeper that accepts connections and never answers (a member that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def _with_ticker(operation: Awaitable[T]) -> tuple[T | BaseException, float, float]:
    """Run ``operation`` beside a 10 ms ticker: its outcome, its duration and the longest tick gap."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = loop.time()
    outcome: T | BaseException
    try:
        outcome = await operation
    except Exception as exc:
        outcome = exc
    took = loop.time() - started
    done.set()
    await ticker
    return outcome, took, max(gaps, default=took)


@pytest.mark.parametrize("zookeeper", ["refused", "silent"])
def test_aregister_against_zookeeper_away_fails_in_time_and_the_loop_runs(
    zookeeper: str, silent_address: str
) -> None:
    hosts = refused_address() if zookeeper == "refused" else silent_address
    registry = Registry(hosts)

    async def main() -> tuple[object, float, float]:
        return await _with_ticker(registry.aregister("svc", "http://10.0.0.1:80", timeout=1.5))

    try:
        outcome, took, gap = asyncio.run(main())
    finally:
        registry.close()
    assert isinstance(outcome, RegistryError), outcome
    assert took >= 1.0
    assert gap < MAX_GAP, f"the loop stalled {gap:.2f} s during a {took:.2f} s aregister"


def test_registration_aclose_with_drain_keeps_the_loop_running(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    async def main() -> tuple[object, float, float, str, bool]:
        async with Registry(zk_hosts) as registry:
            registration = await registry.aregister(service, "http://10.0.0.1:80")
            outcome, took, gap = await _with_ticker(registration.aclose(drain=1.0))
            return outcome, took, gap, registration.path, registration.draining

    outcome, took, gap, path, drained = asyncio.run(main())
    assert outcome is None and drained
    assert took >= 0.9
    assert gap < MAX_GAP, f"the loop stalled {gap:.2f} s during a {took:.2f} s drain"
    zk.sync(path)
    assert zk.exists(path) is None


def test_balancer_astart_and_aclose_keep_the_loop_running(silent_address: str) -> None:
    async def main() -> tuple[object, float, object, float]:
        lb = LoadBalancer(silent_address, "svc", start_timeout=1.5)
        started = await _with_ticker(lb.astart())
        closed = await _with_ticker(lb.aclose())
        return started[0], started[2], closed[0], closed[2]

    start_outcome, start_gap, close_outcome, close_gap = asyncio.run(main())
    assert isinstance(start_outcome, RegistryError), start_outcome
    assert close_outcome is None
    assert max(start_gap, close_gap) < MAX_GAP


def test_connect_with_zookeeper_down_raises_in_time_and_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    discovery = zklb.connect(refused_address(), start_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(RegistryError):
        discovery.start()
    assert time.monotonic() - began < 5.0
    with pytest.raises(RegistryError):  # a second start is a new attempt, and fails the same way
        discovery.start(timeout=0.5)
    discovery.close()
    wait_until(lambda: {t.ident for t in threading.enumerate()} <= before, 10, "no thread left")


def test_async_with_connect_with_zookeeper_down_raises_and_keeps_the_loop_running() -> None:
    async def enter() -> None:
        async with zklb.connect(refused_address(), start_timeout=1.0):
            raise AssertionError("entered without ZooKeeper")

    async def main() -> tuple[object, float, float]:
        return await _with_ticker(enter())

    outcome, _, gap = asyncio.run(main())
    assert isinstance(outcome, RegistryError), outcome
    assert gap < MAX_GAP


def test_close_during_a_start_wakes_the_starter_at_once() -> None:
    before = set(threading.enumerate())
    discovery = zklb.connect(refused_address(), start_timeout=20.0)
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            discovery.start()
        except BaseException as exc:
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    wait_until(lambda: discovery._starting is not None, 5)
    time.sleep(0.2)  # let the starter reach its wait: this test is about a close that comes during it
    closed_at = time.monotonic()
    discovery.close()
    starter.join(5)
    assert not starter.is_alive()
    assert time.monotonic() - closed_at < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
    with pytest.raises(ClosedError):
        discovery.start()
    # The connect attempt itself gives up too, not only at its 20 s timeout: no thread is left behind.
    wait_until(lambda: not set(threading.enumerate()) - before, 3, "the connect attempt ending")


def test_a_cancelled_aregister_leaves_no_registration(zk: KazooClient, zk_hosts: str, service: str) -> None:
    registry = Registry(zk_hosts)

    async def main() -> None:
        task = asyncio.create_task(registry.aregister(service, "http://10.0.0.1:80", id="cancelled"))
        await asyncio.sleep(0)  # the call is on its way to ZooKeeper
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        # The register went on after the cancel; what it made, nobody holds, so it is closed again.
        wait_until(lambda: not registry.registrations(), 10, "the orphaned registration closed")
        path = f"/services/{service}/cancelled"

        def gone() -> bool:
            zk.sync(path)
            return zk.exists(path) is None

        wait_until(gone, 10, "its znode gone")
    finally:
        registry.close()
