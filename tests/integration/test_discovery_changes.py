"""ServiceWatcher on a real ZooKeeper: what one change costs and when it shows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient

from zklb import ServiceWatcher
from zklb.codecs.curator import CuratorCodec
from zklb.instance import ServiceInstance

codec = CuratorCodec()


def create(zk: KazooClient, service: str, key: str, *, ephemeral: bool = False) -> None:
    instance = ServiceInstance(id=key, host="10.0.0.1", port=80)
    zk.create(
        f"/services/{service}/{key}", codec.encode(service, instance), ephemeral=ephemeral, makepath=True
    )


@contextmanager
def held_list(watcher: ServiceWatcher) -> Iterator[threading.Event]:
    """Hold the watcher's next children-list read until the block ends; yields "the read began"."""
    reader = watcher._reader
    real = reader.list_children
    began, release = threading.Event(), threading.Event()

    def held(client: KazooClient, on_children: Any, on_data: Any) -> list[str] | None:
        began.set()
        assert release.wait(10)
        return real(client, on_children, on_data)

    reader.list_children = held  # type: ignore[method-assign]
    try:
        yield began
    finally:
        release.set()
        reader.list_children = real  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("ephemeral", "served_meanwhile"),
    [
        # Persistent znodes, each deleted by a request of its own: the deletion ZooKeeper reported on
        # b's data watch is served before the list read (a round trip, O(n) to decode) answers.
        (False, {"a", "c"}),
        # One session's znodes: when a session closes ZooKeeper deletes all of them and reports them
        # one by one, and the empty-pool grace must see them go at once: no deletion is served early.
        (True, {"a", "b", "c"}),
    ],
)
def test_a_leave_is_published_before_the_list_is_read_back_unless_its_session_holds_others(
    zk: KazooClient, zk_hosts: str, service: str, ephemeral: bool, served_meanwhile: set[str]
) -> None:
    for key in ("a", "b", "c"):
        create(zk, service, key, ephemeral=ephemeral)
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: len(m) == 3, 10)
        with held_list(watcher) as began:
            zk.delete(f"/services/{service}/b")
            assert began.wait(10)
            assert set(watcher.membership.by_id) == served_meanwhile
        assert watcher.wait_for(lambda m: set(m.by_id) == {"a", "c"}, 10)
        create(zk, service, "b")  # and the re-armed watches see it come back
        assert watcher.wait_for(lambda m: set(m.by_id) == {"a", "b", "c"}, 10)


def test_a_leave_costs_one_children_list(zk: KazooClient, zk_hosts: str, service: str) -> None:
    for key in ("a", "b", "c"):
        create(zk, service, key)
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: len(m) == 3, 10)
        before = watcher.read_count
        zk.delete(f"/services/{service}/b")
        assert watcher.wait_for(lambda m: set(m.by_id) == {"a", "c"}, 10)
        # A join after it, seen once its list and its read are done: every read of the leave is
        # counted by then, however its two notices (b's data watch, the children watch) fell.
        create(zk, service, "d")
        assert watcher.wait_for(lambda m: "d" in m.by_id, 10)
        # The leave's list, the join's read, and the join's list unless the leave's already saw d: never
        # a second list for the leave (its two notices used to ask for one each).
        assert watcher.read_count - before in (2, 3)
