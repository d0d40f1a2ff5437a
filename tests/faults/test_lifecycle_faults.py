"""The lifecycle of balancers and watchers when ZooKeeper is away or many share one client: a failed start
leaves nothing behind and can be retried; a lazy start is one shared background start that callers wait
for together, never blocking an event loop; nothing revives a closed balancer; fifty balancers on one
`KazooClient` cost a bounded number of threads and leave nothing on the client once closed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from kazoo.client import KazooClient
from tests.faults.conftest import stays, watch_callbacks, zklb_callbacks

from zklb import ClosedError, LoadBalancer, Registry, ServiceWatcher, ZklbError
from zklb.httpx import AsyncLoadBalancedTransport
from zklb.testing import ZooKeeperEnsemble, wait_until

GetClient = Callable[..., KazooClient]
START_TIMEOUT = 10.0  # the documented default of start_timeout
SLACK = 2.5  # scheduling on a busy two-core machine
BLOCKING = 2.0  # seconds a blocked event loop would stand still in the async start test


def test_failed_start_on_a_borrowed_client_leaves_nothing_and_can_be_retried(
    healthy_ensemble: ZooKeeperEnsemble, member_client: GetClient, zk: KazooClient, service: str
) -> None:
    with Registry(zk) as registry:
        registration = registry.register(service, "http://127.0.0.1:1")
        client = member_client(0)
        healthy_ensemble.stop_member(0)
        wait_until(lambda: not client.connected, 10, "the client to lose member 0")
        threads = set(threading.enumerate())
        listeners = set(client.state_listeners)
        watches = watch_callbacks(client)

        lb = LoadBalancer(client, service)
        for attempt in (1, 2):
            with pytest.raises(ZklbError):
                lb.start(timeout=1.0)
            wait_until(
                lambda: set(threading.enumerate()) <= threads,
                5,
                f"the threads of failed start #{attempt} to end",
            )
            assert set(client.state_listeners) == listeners, zklb_callbacks(client)
            assert watch_callbacks(client) == watches, zklb_callbacks(client)

        healthy_ensemble.start_member(0)
        wait_until(lambda: client.connected, 30, "the client to reconnect")
        lb.start(timeout=10.0)
        assert lb.servers() == (registration.instance,)
        assert lb.get_server() == registration.instance
        lb.close()
        assert set(client.state_listeners) == listeners, zklb_callbacks(client)
        assert zklb_callbacks(client) == []
        wait_until(lambda: set(threading.enumerate()) <= threads, 5, "the balancer's threads to end")


def test_a_watcher_whose_start_failed_can_be_started_again(
    healthy_ensemble: ZooKeeperEnsemble, zk: KazooClient, service: str
) -> None:
    with Registry(zk) as registry:
        registration = registry.register(service, "http://127.0.0.1:1")
        healthy_ensemble.stop_member(0)
        threads = set(threading.enumerate())
        # Its own client, to member 0 only: it cannot connect now.
        watcher = ServiceWatcher(healthy_ensemble.members[0].host, service)
        try:
            with pytest.raises(ZklbError):
                watcher.start(timeout=1.0)
            wait_until(lambda: set(threading.enumerate()) <= threads, 10, "the failed start's threads to end")
            healthy_ensemble.start_member(0)
            watcher.start(timeout=10.0)
            assert watcher.membership.instances == (registration.instance,)
        finally:
            watcher.close()
        wait_until(lambda: set(threading.enumerate()) <= threads, 10, "the watcher's threads to end")


def test_callers_of_a_lazy_start_wait_together_not_one_after_another(dead_hosts: str, service: str) -> None:
    lb = LoadBalancer(dead_hosts, service)  # never started: the first pick starts it
    barrier = threading.Barrier(3)
    outcomes: dict[str, tuple[float, BaseException | None]] = {}

    def caller(name: str, pick: Callable[[], object]) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            pick()
        except BaseException as exc:
            outcomes[name] = (time.monotonic() - started, exc)
        else:
            outcomes[name] = (time.monotonic() - started, None)

    picks: dict[str, Callable[[], object]] = {
        "get_server-1": lb.get_server,
        "get_server-2": lb.get_server,
        "acquire": lb.acquire,
    }
    callers = [
        threading.Thread(target=caller, args=item, name=f"caller-{item[0]}", daemon=True)
        for item in picks.items()
    ]
    began = time.monotonic()
    try:
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join(max(0.0, began + START_TIMEOUT + SLACK - time.monotonic()))
        waited = time.monotonic() - began
        assert set(outcomes) == set(picks), (
            f"after {waited:.1f} s only {sorted(outcomes)} had an answer: callers queue behind each other"
        )
        for name, (took, error) in outcomes.items():
            assert isinstance(error, ZklbError), (name, error)
            assert took <= START_TIMEOUT + SLACK, (name, took)
    finally:
        lb.close()
    with pytest.raises(ClosedError):
        lb.get_server()


def test_an_async_start_never_blocks_the_event_loop(dead_hosts: str, service: str) -> None:
    # A start that blocked the loop would stop it for the whole timeout (BLOCKING); a loop that merely
    # waits for a CPU on a loaded machine stops for far less. Half the timeout tells the two apart.
    lb = LoadBalancer(dead_hosts, service)  # never started; ZooKeeper unreachable

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ticks = [loop.time()]
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                await asyncio.sleep(0.02)
                ticks.append(loop.time())

        def longest_gap() -> float:
            points = [*ticks, loop.time()]
            return max(b - a for a, b in itertools.pairwise(points))

        ticking = asyncio.create_task(ticker())
        async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(lb)) as client:
            # The async transport starts the balancer on first use: the loop must keep running meanwhile.
            began = loop.time()
            with contextlib.suppress(TimeoutError, ZklbError, httpx.HTTPError):
                await asyncio.wait_for(client.get(f"http://{service}/"), BLOCKING)
            took = loop.time() - began
        assert longest_gap() < BLOCKING / 2, f"the event loop stood still {longest_gap():.1f} s in a request"
        assert took < BLOCKING + SLACK, took

        began = loop.time()
        with pytest.raises(ZklbError):
            await lb.astart(timeout=BLOCKING)
        took = loop.time() - began
        assert longest_gap() < BLOCKING / 2, f"the event loop stood still {longest_gap():.1f} s in astart()"
        assert took < BLOCKING + SLACK, took
        done.set()
        await ticking

    try:
        asyncio.run(main())
    finally:
        lb.close()


def answering(lb: LoadBalancer) -> list[str]:
    """The ways to pick from ``lb`` that do not refuse: picks without `ClosedError`, ``has_server()``
    saying yes. A closed balancer has none."""
    found = []
    for name, pick in (("get_server()", lb.get_server), ("acquire()", lb.acquire)):
        try:
            found.append(f"{name} -> {pick()!r}")
        except ClosedError:
            pass
    if found:
        return found
    try:
        if lb.has_server():
            found.append("has_server() -> True")
    except ClosedError:
        pass
    return found


def refuses(lb: LoadBalancer) -> bool:
    return not answering(lb)


def test_nothing_revives_a_closed_balancer(zk: KazooClient, zk_hosts: str, service: str) -> None:
    with Registry(zk) as registry:
        registry.register(service, "http://127.0.0.1:1")
        for round_ in range(3):
            lb = LoadBalancer(zk_hosts, service).start(timeout=30)
            own = lb.add_server(f"http://127.0.0.1:{100 + round_}")
            assert own.instance in lb.servers() and len(lb.servers()) == 2 + round_
            # close() deletes the balancer's own registration: the membership change it causes must not
            # reinstall a picker behind its back.
            lb.close()
            assert own.closed
            with contextlib.suppress(ClosedError):
                lb.set_strategy("random")  # a rebuild after close() must not reinstall a picker either
            with pytest.raises(ClosedError):
                lb.start()
            registry.register(service, f"http://127.0.0.1:{200 + round_}")  # a change it no longer follows

            assert answering(lb) == [], f"round {round_}"
            stays(functools.partial(refuses, lb), 0.5, f"the closed balancer refusing picks (round {round_})")


SERVICES = 50


def test_fifty_balancers_on_one_client_cost_bounded_threads_and_leave_nothing(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    names = [f"{service}-{i:02d}" for i in range(SERVICES)]
    with Registry(zk) as registry:
        registered = {name: registry.register(name, "http://127.0.0.1:1").instance for name in names}
        client = KazooClient(hosts=zk_hosts, timeout=10.0)
        client.start(timeout=30)
        try:
            threads = set(threading.enumerate())
            listeners = set(client.state_listeners)
            watches = watch_callbacks(client)

            first = LoadBalancer(client, names[0]).start(timeout=30)
            balancers = [first]
            assert first.get_server() == registered[names[0]]
            with_one = threading.active_count()
            for name in names[1:]:
                balancers.append(LoadBalancer(client, name).start(timeout=30))
            with_fifty = threading.active_count()
            for name, lb in zip(names, balancers, strict=True):
                assert lb.get_server() == registered[name]
            assert with_fifty <= with_one + 3, (
                f"{with_fifty - with_one} more threads for 49 more balancers on one client"
            )

            for lb in balancers:
                lb.close()
            assert client.connected  # borrowed: never stopped
            assert set(client.state_listeners) == listeners, zklb_callbacks(client)
            assert zklb_callbacks(client) == [], zklb_callbacks(client)[:5]
            assert watch_callbacks(client) == watches
            wait_until(
                lambda: set(threading.enumerate()) <= threads,
                10,
                "the balancers' threads to end",
            )
        finally:
            client.stop()
            client.close()


def test_closing_a_balancer_that_registered_servers_is_prompt_while_zookeeper_is_down(service: str) -> None:
    with ZooKeeperEnsemble(size=1) as standalone:
        lb = LoadBalancer(standalone.hosts, service, request_timeout=20.0).start()
        lb.add_server("http://10.0.0.1:80")
        standalone.stop_all()
        started = time.monotonic()
        lb.close()  # its own client: stopping it ends the session, nothing to wait for
        assert time.monotonic() - started < 20.0 / 2
        with pytest.raises(ClosedError):
            lb.get_server()
