"""`Registry` through ZooKeeper outages and session losses: it answers in bounded time, never leaves a
ghost or a leftover, finishes what it could not do once ZooKeeper is back, and never takes a znode that
another live session owns.

The outage here is member 0 stopped under a client that talks to member 0 only (see the conftest): the
ensemble keeps serving, so `survivor_zk` sees what the registry leaves behind, and a session outlives an
outage shorter than its timeout, so a znode that disappears was deleted, not expired.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from tests.faults.conftest import (
    children,
    decoded_urls,
    expire_session_id,
    owners,
    stays,
    watch_callbacks,
    zklb_callbacks,
)

from zklb import ClosedError, LoadBalancer, Registry, RegistryError, ServiceInstance, ServiceWatcher
from zklb.codecs.curator import CuratorCodec
from zklb.testing import ZooKeeperEnsemble, wait_until

REQUEST_TIMEOUT = 10.0  # the documented default of request_timeout
SLACK = 2.0  # scheduling on a busy two-core machine

GetClient = Callable[..., KazooClient]


def lose_member_0(ensemble: ZooKeeperEnsemble, client: KazooClient) -> None:
    ensemble.stop_member(0)
    wait_until(lambda: not client.connected, 10, "the client to lose member 0")


def member_0_back(ensemble: ZooKeeperEnsemble, client: KazooClient) -> None:
    ensemble.start_member(0)
    wait_until(lambda: client.connected, 30, "the client to reconnect to member 0")


def test_register_during_an_outage_raises_within_its_timeout_and_leaves_no_ghost(
    healthy_ensemble: ZooKeeperEnsemble, member_client: GetClient, survivor_zk: KazooClient, service: str
) -> None:
    client = member_client(0)
    registry = Registry(client)
    try:
        anchor = registry.register(service, "http://127.0.0.1:1")
        session = client.client_id[0]
        lose_member_0(healthy_ensemble, client)

        started = time.monotonic()
        with pytest.raises(RegistryError):
            registry.register(service, "http://127.0.0.1:2")  # an id of its own (a UUID)
        took = time.monotonic() - started
        assert took <= REQUEST_TIMEOUT + SLACK, f"register() raised after {took:.1f} s"
        assert registry.registrations() == (anchor,)

        member_0_back(healthy_ensemble, client)
        assert client.client_id[0] == session  # the session lived on: nothing vanished by expiry
        client.sync(f"/services/{service}")  # anything kazoo queued during the outage has been sent now
        wait_until(
            lambda: decoded_urls(survivor_zk, service) == ["http://127.0.0.1:1"],
            10,
            "no znode for the failed registration",
        )
        stays(lambda: decoded_urls(survivor_zk, service) == ["http://127.0.0.1:1"], 2.0, "no ghost")
        # The same server registered again, now that ZooKeeper is back: exactly one znode for it.
        again = registry.register(service, "http://127.0.0.1:2")
        assert decoded_urls(survivor_zk, service) == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        assert set(registry.registrations()) == {anchor, again}
    finally:
        registry.close()


def test_every_zookeeper_timeout_is_a_constructor_argument(
    healthy_ensemble: ZooKeeperEnsemble, member_client: GetClient, survivor_zk: KazooClient, service: str
) -> None:
    client = member_client(0)
    registry = Registry(client, request_timeout=1.0)
    try:
        registry.register(service, "http://127.0.0.1:1")
        lose_member_0(healthy_ensemble, client)
        for timeout, bound in ((None, 1.0), (0.5, 0.5)):  # register(timeout=None): the registry's
            started = time.monotonic()
            with pytest.raises(RegistryError):
                registry.register(service, "http://127.0.0.1:2", timeout=timeout)
            took = time.monotonic() - started
            assert took <= bound + 1.0, f"register(timeout={timeout}) raised after {took:.1f} s"
        member_0_back(healthy_ensemble, client)
        wait_until(
            lambda: decoded_urls(survivor_zk, service) == ["http://127.0.0.1:1"],
            10,
            "no znode for either failed registration",
        )
        # The balancer and the watcher take it too, and work with it.
        with (
            LoadBalancer(client, service, request_timeout=1.0) as lb,
            ServiceWatcher(client, service, request_timeout=1.0) as watcher,
        ):
            assert [s.url for s in lb.servers()] == ["http://127.0.0.1:1"]
            assert [s.url for s in watcher.membership.instances] == ["http://127.0.0.1:1"]
    finally:
        registry.close()


def test_close_during_an_outage_takes_one_timeout_in_all_and_leaves_nothing(
    healthy_ensemble: ZooKeeperEnsemble, survivor_zk: KazooClient, service: str
) -> None:
    threads = set(threading.enumerate())
    # The registry's own client, on member 0 only; its session (4 s) cannot be renewed once closed.
    registry = Registry(healthy_ensemble.members[0].host, session_timeout=4.0)
    registrations = [registry.register(service, f"http://127.0.0.1:{port}") for port in (1, 2, 3)]
    path = f"/services/{service}"
    assert len(children(survivor_zk, path)) == 3
    healthy_ensemble.stop_member(0)

    started = time.monotonic()
    registry.close()
    took = time.monotonic() - started
    assert took <= REQUEST_TIMEOUT + SLACK, f"close() of 3 registrations took {took:.1f} s"
    assert registry.registrations() == ()
    assert all(r.closed for r in registrations)
    with pytest.raises(ClosedError):
        registry.register(service, "http://127.0.0.1:4")
    wait_until(lambda: children(survivor_zk, path) == [], 4.0 + 10, "no znode left behind")
    wait_until(lambda: set(threading.enumerate()) <= threads, 10, "the registry's threads to end")


def test_close_on_a_borrowed_client_during_an_outage_deletes_once_reconnected(
    healthy_ensemble: ZooKeeperEnsemble, member_client: GetClient, survivor_zk: KazooClient, service: str
) -> None:
    client = member_client(0)
    threads = set(threading.enumerate())
    listeners = set(client.state_listeners)
    watches = watch_callbacks(client)
    registry = Registry(client)
    registrations = [registry.register(service, f"http://127.0.0.1:{port}") for port in (1, 2)]
    path = f"/services/{service}"
    session = client.client_id[0]
    lose_member_0(healthy_ensemble, client)

    started = time.monotonic()
    registry.close()  # nothing can be deleted now; the client is borrowed, so it stays up
    took = time.monotonic() - started
    assert all(r.closed for r in registrations)
    assert children(survivor_zk, path) == sorted(r.instance.id for r in registrations)  # still advertised

    member_0_back(healthy_ensemble, client)
    assert client.client_id[0] == session  # same session: only the registry can remove the znodes
    wait_until(lambda: children(survivor_zk, path) == [], 10, "the deletes the outage held back")
    assert took <= REQUEST_TIMEOUT + SLACK, f"close() of 2 registrations took {took:.1f} s"
    # Its work done, the registry leaves nothing on the client it borrowed.
    wait_until(
        lambda: set(client.state_listeners) == listeners and watch_callbacks(client) == watches,
        10,
        f"the registry's callbacks to go: {zklb_callbacks(client)}",
    )
    wait_until(lambda: set(threading.enumerate()) <= threads, 10, "the registry's threads to end")


def test_a_znode_of_our_id_owned_by_another_live_session_is_never_deleted(
    healthy_ensemble: ZooKeeperEnsemble,
    member_client: GetClient,
    survivor_zk: KazooClient,
    service: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="zklb")
    ours = member_client(0, timeout=10.0)
    registry = Registry(ours)
    service_path = f"/services/{service}"
    try:
        registration = registry.register(service, "http://127.0.0.1:1", id="shared-id")
        saved = ours.client_id
        lose_member_0(healthy_ensemble, ours)
        # Our session ends while we cannot hear of it, and our znode with it...
        expire_session_id(saved, ",".join(m.host for m in healthy_ensemble.members[1:]))
        wait_until(lambda: children(survivor_zk, service_path) == [], 10, "our znode gone with our session")
        # ...and another live process takes the same id (a second copy of the instance, say).
        theirs = survivor_zk.client_id[0]
        copy = ServiceInstance.parse("http://127.0.0.1:2", id="shared-id")
        survivor_zk.create(registration.path, CuratorCodec().encode(service, copy), ephemeral=True)

        member_0_back(healthy_ensemble, ours)
        wait_until(lambda: ours.client_id[0] != saved[0], 30, "our new session")
        new = ours.client_id[0]
        stays(
            lambda: owners(survivor_zk, service_path) == {"shared-id": theirs},
            3.0,
            "the other session's znode, untouched",
        )

        def names_both_sessions(message: str) -> bool:
            text = message.lower()
            return all(f"{s:x}" in text or str(s) in text for s in (new, theirs))

        wait_until(
            lambda: any(
                r.levelno >= logging.ERROR and names_both_sessions(r.getMessage()) for r in caplog.records
            ),
            10,
            "an error naming both sessions",
        )
        # Once the other session lets go, ours comes back by itself: the registry kept trying.
        survivor_zk.delete(registration.path)
        wait_until(
            lambda: owners(survivor_zk, service_path) == {"shared-id": new}, 15, "our znode re-created by us"
        )
        assert decoded_urls(survivor_zk, service) == ["http://127.0.0.1:1"]
    finally:
        registry.close()


def _thread_states(pid: int) -> list[str]:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        # A thread that just ended has no stat any more.
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stat", encoding="ascii") as stat:
            states.append(stat.read().rpartition(")")[2].split()[0])
    return states


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped.

    kill() only queues the stop: the JVM's threads go on (and answer requests) until one of them is
    scheduled and stops the rest, which on a loaded machine can come after the next request arrives.
    """
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: set(_thread_states(pid)) == {"T"}, 10, f"every thread of {pid} stopped")


@contextlib.contextmanager
def gave_up_watched(service: str) -> Iterator[tuple[ZooKeeperEnsemble, int, KazooClient]]:
    """A standalone ZooKeeper to freeze (and its pid) and a client for the registry; on the way out,
    checks that no znode ``/services/<service>/gave-up`` was ever created, with an exists watch set
    before: it fires on the create itself, however soon the znode is deleted again."""
    with ZooKeeperEnsemble(size=1) as frozen_zk:
        pid = frozen_zk.members[0].pid
        assert pid is not None
        client = KazooClient(hosts=frozen_zk.hosts, timeout=30.0)
        client.start(timeout=30)
        observer = KazooClient(hosts=frozen_zk.hosts, timeout=30.0)
        observer.start(timeout=30)
        created: list[str] = []
        observer.exists(f"/services/{service}/gave-up", watch=lambda event: created.append(event.type))
        try:
            yield frozen_zk, pid, client
            client.sync(f"/services/{service}")
            assert client.exists(f"/services/{service}/gave-up") is None
            observer.sync(f"/services/{service}")
            assert created == []
        finally:
            for kazoo_client in (client, observer):
                kazoo_client.stop()
                kazoo_client.close()


def test_a_register_that_gave_up_while_zookeeper_was_frozen_never_shows_its_znode(service: str) -> None:
    # ZooKeeper frozen (SIGSTOP): the connection stays up, requests just get no answer. register()
    # gives up while a reconcile pass waits on a read; when ZooKeeper thaws, that pass must not go on
    # to create the znode it was about to create (other balancers would serve it, however briefly).
    with (
        gave_up_watched(service) as (frozen_zk, pid, client),
        ServiceWatcher(frozen_zk.hosts, service) as watcher,
        Registry(client) as registry,
    ):
        freeze(pid)  # not just kill(): a read answered before the stop leads to a create
        try:
            with pytest.raises(RegistryError):
                registry.register(service, "http://10.0.0.1:80", id="gave-up", timeout=1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        # Passes run one at a time: once a later registration is confirmed, the one that was
        # waiting on the frozen read has finished.
        registry.register(service, "http://10.0.0.2:80", id="later")
        assert watcher.wait_for(lambda m: "later" in m.by_id, 10)


def test_a_register_that_gave_up_while_its_parent_was_being_made_never_shows_its_znode(
    service: str,
) -> None:
    # The create finds no service znode: the parents are made, then the create is sent again. ZooKeeper
    # freezes just as the parents are asked for; register() gives up; after the thaw, the second
    # create must not go (kazoo's makepath chain sent it whatever became of the registration).
    with gave_up_watched(service) as (_, pid, client):
        ensure_path_async = client.ensure_path_async
        frozen: list[bool] = []

        def freeze_first(*args: Any, **kwargs: Any) -> Any:  # kazoo's own chain calls it too
            if not frozen:
                frozen.append(True)
                freeze(pid)
            return ensure_path_async(*args, **kwargs)

        client.ensure_path_async = freeze_first
        with Registry(client) as registry:
            try:
                with pytest.raises(RegistryError):
                    registry.register(service, "http://10.0.0.1:80", id="gave-up", timeout=1.0)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert frozen, "the registration never asked for its parents"
            registry.register(service, "http://10.0.0.2:80", id="later")  # passes run one at a time


def test_a_registration_deleted_by_someone_else_is_put_back(zk: KazooClient, service: str) -> None:
    with Registry(zk, request_timeout=5.0) as registry:
        reg = registry.register(service, "http://10.0.0.3:80", weight=3)
        zk.delete(reg.path)  # an operator's mistake, a cleanup script: the service is still up
        wait_until(lambda: zk.exists(reg.path) is not None, 10, "the znode put back")
        assert decoded_urls(zk, service) == ["http://10.0.0.3:80"]


def test_two_registries_on_one_client_cannot_hold_the_same_path(zk: KazooClient, service: str) -> None:
    first, second = Registry(zk), Registry(zk)
    try:
        first.register(service, "http://10.0.0.4:9000", id="same")
        # Same session, so ZooKeeper would take either for the owner: the second would overwrite the
        # first's data, and the first's close() would delete the second's registration.
        with pytest.raises(RegistryError, match="another Registry"):
            second.register(service, "http://10.0.0.4:9001", id="same")
        assert decoded_urls(zk, service) == ["http://10.0.0.4:9000"]
        first.close()
        second.register(service, "http://10.0.0.4:9001", id="same")  # free once the first let go
        assert decoded_urls(zk, service) == ["http://10.0.0.4:9001"]
    finally:
        first.close()
        second.close()


def test_closing_after_the_borrowed_client_was_stopped_is_prompt_and_leaves_no_thread(
    zk_hosts: str, service: str
) -> None:
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=30)
    registry = Registry(client, request_timeout=20.0)
    registry.register(service, "http://10.0.0.5:80")
    worker_name = f"zklb-worker-{id(client):x}"
    assert any(t.name == worker_name for t in threading.enumerate())
    client.stop()  # its owner stopped it: the session, and the znode, are gone
    started = time.monotonic()
    registry.close()
    assert time.monotonic() - started < 20.0 / 2  # nothing left to wait for, not a request timeout
    wait_until(lambda: all(t.name != worker_name for t in threading.enumerate()), 10, "the worker to end")
    client.close()


def test_concurrent_update_and_drain_both_land(zk: KazooClient, service: str) -> None:
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that an unguarded read-modify-write races
    try:
        with Registry(zk) as registry:
            for round_ in range(20):
                reg = registry.register(service, f"http://10.0.1.{round_ + 1}:80")
                threads = [
                    threading.Thread(target=reg.update, kwargs={"weight": 7}),
                    threading.Thread(target=reg.drain),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                assert (reg.instance.weight, reg.instance.draining) == (7, True), round_
                reg.close()
    finally:
        sys.setswitchinterval(old_interval)
