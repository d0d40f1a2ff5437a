"""A reconnect of the same session re-arms the watchers' watches with one SetWatches per client
(`zklb._rewatch`) instead of one read per instance, and no change made while the client was away is
missed: joins, leaves and weight changes made then are seen after it. If SetWatches fails the watcher
re-reads everything, as before; after a session expiry it re-reads everything without trying it.

The client under test talks to member 0 only (`member_client`); member 0 is stopped, the changes are
made through the other two (`survivor_zk`), and member 0 is started again. Requests are counted where
kazoo sends them (``KazooClient._call``), by opcode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss
from tests.faults.conftest import expire_session_id, watch_callbacks, zklb_callbacks

from zklb import ServiceInstance, ServiceWatcher
from zklb._rewatch import SET_WATCHES
from zklb.codecs.curator import CuratorCodec
from zklb.membership import Membership
from zklb.testing import ZooKeeperEnsemble, wait_until

N = 60  # instances: the re-sync without SetWatches costs at least N + 1 requests per watcher


def instance(i: int, weight: int = 1) -> ServiceInstance:
    return ServiceInstance.parse(f"http://10.9.{i // 250}.{i % 250 + 1}:80", id=f"i{i:03d}", weight=weight)


def fill(zk: KazooClient, service: str, n: int) -> str:
    path = f"/services/{service}"
    zk.create(path, makepath=True)
    codec = CuratorCodec()
    for result in [zk.create_async(f"{path}/i{i:03d}", codec.encode(service, instance(i))) for i in range(n)]:
        result.get(timeout=30)
    return path


def change_while_away(zk: KazooClient, service: str) -> dict[str, int]:
    """Two joins, two leaves, two weight changes; the membership (id -> weight) they leave behind."""
    path = f"/services/{service}"
    codec = CuratorCodec()
    zk.create(f"{path}/i900", codec.encode(service, instance(900)))
    zk.create(f"{path}/i901", codec.encode(service, instance(901, weight=7)))
    zk.delete(f"{path}/i000")
    zk.delete(f"{path}/i001")
    zk.set(f"{path}/i002", codec.encode(service, instance(2, weight=5)))
    zk.set(f"{path}/i003", codec.encode(service, instance(3, weight=9)))
    truth = {f"i{i:03d}": 1 for i in range(4, N)}
    truth.update(i002=5, i003=9, i900=1, i901=7)
    return truth


def shows(truth: dict[str, int]) -> Callable[[Membership], bool]:
    return lambda m: {i.id: i.weight for i in m.instances} == truth


@contextmanager
def counted(client: KazooClient, *, fail_set_watches: bool = False) -> Iterator[Counter[int]]:
    """Count the requests ``client`` sends, by opcode; optionally fail each SetWatches as a dropped
    connection would."""
    sent: Counter[int] = Counter()
    send = client._call

    def call(request: Any, async_object: Any) -> object:
        sent[request.type] += 1
        if fail_set_watches and request.type == SET_WATCHES:
            async_object.set_exception(ConnectionLoss())
            return False
        return send(request, async_object)

    client._call = call
    try:
        yield sent
    finally:
        del client._call  # the instance attribute: kazoo's method again


def callbacks_of(client: KazooClient, watcher: ServiceWatcher) -> list[tuple[str, str, object]]:
    """The watch callbacks ``watcher`` has on ``client`` (those of its runs, `RunWatches`)."""
    return [
        (kind, path, callback)
        for kind, path, callback in watch_callbacks(client)
        if getattr(getattr(callback, "__self__", None), "watcher", None) is watcher
    ]


def outage(ensemble: ZooKeeperEnsemble, client: KazooClient, during: Callable[[], object]) -> None:
    """Stop member 0 (the client's only one), run ``during`` while the client is away, start it again."""
    ensemble.stop_member(0)
    wait_until(lambda: not client.connected, 30, "the client to notice member 0 is gone")
    during()
    ensemble.start_member(0, wait=True, timeout=60)
    wait_until(lambda: client.connected, 30, "the client to reconnect")


def test_same_session_reconnect_sends_one_set_watches_and_misses_no_change(
    healthy_ensemble: ZooKeeperEnsemble,
    member_client: Callable[..., KazooClient],
    survivor_zk: KazooClient,
    service: str,
) -> None:
    client = member_client(0, timeout=30.0)
    path = fill(survivor_zk, service, N)
    # Three watchers on the one client: two stay, one is closed while the client is away.
    first = ServiceWatcher(client, service).start(timeout=30)
    second = ServiceWatcher(client, service, resync_delay=0).start(timeout=30)
    closed = ServiceWatcher(client, service).start(timeout=30)
    # kazoo's own recipes on the same client follow their own way (a read on CONNECTED) and must not
    # be disturbed by the SetWatches.
    lists: list[list[str]] = []
    datas: list[bytes | None] = []
    client.ChildrenWatch(path, lambda names: lists.append(sorted(names)))
    client.DataWatch(f"{path}/i002", lambda data, stat: datas.append(data))
    session = client._session_id
    reads_before = first.read_count + second.read_count
    assert len(callbacks_of(client, closed)) == N + 1  # the children list and each instance

    with counted(client) as sent:
        truth: dict[str, int] = {}

        def during() -> None:
            closed.close()
            truth.update(change_while_away(survivor_zk, service))

        outage(healthy_ensemble, client, during)
        for watcher in (first, second):
            assert watcher.wait_for(shows(truth), 30), watcher.membership

    assert client._session_id == session  # the same session came back: no full re-sync due
    assert sent[SET_WATCHES] == 1  # one for every watcher on the client
    # The changes themselves, not the instances, cost reads: per watcher one children list, the two
    # joins and the two weight changes, and the two leaves' data watches firing (at most 7).
    reads = first.read_count + second.read_count - reads_before
    assert reads <= 2 * 7, reads
    assert reads < N  # without SetWatches: more than N per watcher
    # The recipes converged too.
    wait_until(lambda: lists and lists[-1] == sorted(truth), 30, "ChildrenWatch to see the changes")
    wait_until(lambda: datas and datas[-1] == survivor_zk.get(f"{path}/i002")[0], 30, "DataWatch to see it")
    # The watcher closed while the client was away was not re-armed.
    assert not callbacks_of(client, closed)
    assert len(callbacks_of(client, first)) >= N  # ... while the others' were
    first.close()
    second.close()
    assert not zklb_callbacks(client)

    # Later changes still reach the watches SetWatches re-armed.
    with ServiceWatcher(client, service) as again:
        survivor_zk.delete(f"{path}/i900")
        truth.pop("i900")
        assert again.wait_for(shows(truth), 30)


@pytest.mark.parametrize("fault", ["set_watches_fails", "session_expires"])
def test_a_failed_set_watches_or_an_expired_session_resyncs_in_full(
    healthy_ensemble: ZooKeeperEnsemble,
    member_client: Callable[..., KazooClient],
    survivor_zk: KazooClient,
    service: str,
    fault: str,
) -> None:
    client = member_client(0, timeout=30.0)
    fill(survivor_zk, service, N)
    watcher = ServiceWatcher(client, service, resync_delay=0).start(timeout=30)
    session = client.client_id
    reads_before = watcher.read_count
    truth: dict[str, int] = {}
    survivors = ",".join(m.host for m in healthy_ensemble.members[1:])

    def during() -> None:
        if fault == "session_expires":
            expire_session_id(session, survivors)
        truth.update(change_while_away(survivor_zk, service))

    with counted(client, fail_set_watches=fault == "set_watches_fails") as sent:
        outage(healthy_ensemble, client, during)
        assert watcher.wait_for(shows(truth), 30), watcher.membership
    if fault == "session_expires":
        assert client._session_id != session[0]
        assert sent[SET_WATCHES] == 0  # nothing of an expired session is armed: not even tried
    else:
        assert client._session_id == session[0]
        assert sent[SET_WATCHES] == 1
    assert watcher.read_count - reads_before > N  # every known instance checked again
    watcher.close()
    assert not zklb_callbacks(client)
