"""What an operator reads in the logs, against the real ensemble: one line per event, not per retry.

Outages here are member 0 stopped while the balancer under test talks to that member only (its
own kazoo client, so kazoo's lines go through zklb's quiet logger), shorter than the session timeout.
"""

from __future__ import annotations

import logging

import pytest
from kazoo.client import KazooClient

from zklb import LoadBalancer, Registry
from zklb.testing import ZooKeeperEnsemble, wait_until


def messages(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


def kazoo_retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("Connection refused" in m for m in messages(caplog, "zklb.kazoo", logging.DEBUG))


def test_an_outage_is_one_warning_then_one_info_and_kazoo_says_one_line(
    healthy_ensemble: ZooKeeperEnsemble,
    survivor_zk: KazooClient,
    service: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="zklb")
    caplog.set_level(logging.DEBUG, logger="zklb.kazoo")  # last: it sets the capturing handler's level too
    member = healthy_ensemble.members[0]  # survivor_zk talks to the other two
    with Registry(survivor_zk) as registry:  # a client zklb does not own: its kazoo lines are not counted
        registry.register(service, "http://127.0.0.1:8001")
        with LoadBalancer(member.host, service, session_timeout=30.0) as lb:
            for outage in (1, 2):
                caplog.clear()
                healthy_ensemble.stop_member(member.index)
                wait_until(lambda: messages(caplog, "zklb.connection", logging.WARNING), 15, "the warning")
                # Let kazoo retry a few times (about once a second) before the member comes back.
                wait_until(
                    lambda: (
                        sum("Connecting to" in m for m in messages(caplog, "zklb.kazoo", logging.DEBUG)) >= 3
                    ),
                    15,
                    "kazoo to retry",
                )
                healthy_ensemble.start_member(member.index, wait=True, timeout=60)
                wait_until(lambda: messages(caplog, "zklb.connection", logging.INFO), 30, "the restore line")
                assert lb.pool_stats().connection == "connected"

                (warning,) = messages(caplog, "zklb.connection", logging.WARNING)
                assert "connection suspended" in warning and member.host in warning, warning
                assert f"serving the last-known membership of {service}" in warning, warning
                (restored,) = messages(caplog, "zklb.connection", logging.INFO)
                assert "restored after" in restored and "the same session" in restored, restored
                # kazoo's own lines: many (now at DEBUG), but a single warning for the whole outage.
                kazoo_warnings = [
                    r for r in caplog.records if r.name == "zklb.kazoo" and r.levelno >= logging.WARNING
                ]
                assert len(kazoo_warnings) == 1, (outage, [r.getMessage() for r in kazoo_warnings])
                assert not [
                    r for r in caplog.records if r.name == "kazoo.client" and r.levelno >= logging.INFO
                ]


def test_a_balancer_start_and_each_change_batch_are_one_info_line_each(
    zk_hosts: str, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zklb")
    with Registry(zk_hosts) as registry:
        first = registry.register(service, "http://127.0.0.1:8001", id="first")
        with LoadBalancer(zk_hosts, service) as lb:
            started = messages(caplog, "zklb.balancer", logging.INFO)
            assert started == [
                f"load balancer for /services/{service} started: 1 instances, strategy round_robin"
            ]

            def changes() -> list[str]:
                return messages(caplog, "zklb.discovery", logging.INFO)

            caplog.clear()
            registry.register(service, "http://127.0.0.1:8002", id="second")
            wait_until(lambda: len(lb.servers()) == 2, 10, "the join")
            assert changes() == [
                f"/services/{service}: joined second (http://127.0.0.1:8002) (now 2 instances)"
            ]

            caplog.clear()
            first.update(weight=3)
            wait_until(lambda: lb.servers()[0].weight == 3, 10, "the weight change")
            first.drain()
            wait_until(lambda: lb.servers()[0].draining, 10, "the drain")
            first.close()
            wait_until(lambda: len(lb.servers()) == 1, 10, "the leave")
            assert changes() == [
                f"/services/{service}: changed first (http://127.0.0.1:8001: weight 1->3) (now 2 instances)",
                f"/services/{service}: changed first (http://127.0.0.1:8001: draining) (now 2 instances)",
                f"/services/{service}: left first (http://127.0.0.1:8001) (now 1 instances)",
            ]
