"""A ServerSet (sequential) create whose answer is lost, then a change before ZooKeeper answers again."""

from __future__ import annotations

import os
import signal
import threading
import uuid

from kazoo.client import KazooClient

from zklb import LoadBalancer, Registry
from zklb.testing import ZooKeeperEnsemble, wait_until


def test_a_lost_create_then_a_drain_leaves_one_drained_member_and_nothing_after_close() -> None:
    # Found by an adversarial run: the lost create was adopted only if it held the registration's data
    # of now, so a drain() in between made the next pass create a second member while the first stayed
    # ALIVE and served, and survived close() for as long as the (borrowed) client's session lived.
    service = f"svc-{uuid.uuid4().hex[:10]}"
    parent = f"/services/{service}"
    with ZooKeeperEnsemble(size=1) as zk:
        member = zk.members[0]
        assert member.pid is not None
        client = KazooClient(hosts=zk.hosts, timeout=30.0)
        client.start(30)
        reader = KazooClient(hosts=zk.hosts, timeout=10.0)
        reader.start(30)
        registry = Registry(client, codec="serverset", request_timeout=1.0)
        try:
            registry.register(service, "http://127.0.0.1:8301")  # the parent exists: a create is one request
            outcome: list[object] = []

            def register() -> None:
                try:
                    outcome.append(registry.register(service, "http://127.0.0.1:8302", timeout=30))
                except Exception as exc:
                    outcome.append(exc)

            os.kill(member.pid, signal.SIGSTOP)  # requests are accepted and not answered
            try:
                thread = threading.Thread(target=register)
                thread.start()
                wait_until(
                    lambda: any(
                        r._uncertain is not None and r._error is not None
                        for r in list(registry._desired.values())
                    ),
                    10,
                    "a create sent and timed out",
                )
                registry.drain(timeout=0)  # say SIGTERM arrives during the hiccup
            finally:
                os.kill(member.pid, signal.SIGCONT)
            thread.join(40)
            assert not thread.is_alive()
            assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
            wait_until(lambda: all(r.confirmed() for r in registry.registrations()), 20, "the drain written")
            reader.sync(parent)
            assert len(reader.get_children(parent)) == 2, reader.get_children(parent)  # one member each
            with LoadBalancer(reader, service, codec="serverset") as lb:
                assert lb.servers() == ()  # both drained: a ServerSet reader serves ALIVE members only
            registry.close()
            reader.sync(parent)
            assert reader.get_children(parent) == []  # the client's session lives on: close() deleted
        finally:
            registry.close()
            for kazoo_client in (client, reader):
                kazoo_client.stop()
                kazoo_client.close()
