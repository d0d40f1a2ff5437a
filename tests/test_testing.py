"""Tests for zklb.testing against real ZooKeeper processes (no mocks of ZooKeeper)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from zklb import testing
from zklb.testing import (
    INSTALL_HINT,
    ZooKeeperEnsemble,
    ZooKeeperNotInstalled,
    ZooKeeperStartError,
    _ports,
    four_letter_word,
    zookeeper_available,
)


@contextmanager
def kazoo(hosts: str, session_timeout: float = 10.0) -> Iterator[KazooClient]:
    client = KazooClient(hosts=hosts, timeout=session_timeout)
    client.start(timeout=15.0)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def process_gone(pid: int, root: Path) -> bool:
    """True unless ``pid`` is still one of our ZooKeeper JVMs."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True
    # The pid may already belong to an unrelated new process.
    return str(root).encode() not in cmdline


def session_timeouts(ens: ZooKeeperEnsemble) -> list[int]:
    answers = "".join(
        four_letter_word(member.client_port, "cons") for member in ens.members if member.running
    )
    return sorted(int(value) for value in re.findall(r"\bto=(\d+)", answers))


def test_standalone_serves_kazoo_and_close_cleans_up() -> None:
    assert zookeeper_available()
    with ZooKeeperEnsemble(size=1) as ens:
        (member,) = ens.members
        assert member.index == 0
        assert ens.hosts == member.host == f"127.0.0.1:{member.client_port}"
        assert four_letter_word(member.client_port, "ruok") == "imok"
        assert member.mode() == "standalone"
        pid, root = member.pid, ens.root_dir
        assert pid is not None
        assert member.running

        with kazoo(ens.hosts) as zk:
            zk.create("/zklb/standalone", b"hello", makepath=True)
            assert zk.get("/zklb/standalone")[0] == b"hello"
            assert zk.get_children("/zklb") == ["standalone"]
        # Kazoo's default 10 s session and a short 1 s session are both granted as asked.
        with kazoo(ens.hosts) as zk_default, kazoo(ens.hosts, session_timeout=1.0) as zk_short:
            assert zk_default.connected
            assert zk_short.connected
            assert session_timeouts(ens) == [1000, 10000]

        log = member.log_path.read_text()
        assert member.log_path.parent == member.data_dir
        assert "binding to port" in log  # the server's own logging reaches the file

    assert ens.closed
    assert not member.running
    assert member.pid is None
    assert process_gone(pid, root)
    assert not root.exists()
    ens.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ens.start()


def test_ensemble_survives_losing_the_leader_and_member_rejoins() -> None:
    with ZooKeeperEnsemble(size=3) as ens:
        assert len(ens.members) == 3
        assert ens.hosts == ",".join(f"127.0.0.1:{m.client_port}" for m in ens.members)
        assert len({p for m in ens.members for p in (m.client_port, m.quorum_port, m.election_port)}) == 9
        modes = sorted(str(m.mode()) for m in ens.members)
        assert modes == ["follower", "follower", "leader"]
        leader = next(m.index for m in ens.members if m.mode() == "leader")

        with kazoo(ens.hosts) as zk:
            zk.create("/zklb/ens", b"v1", makepath=True)

            ens.stop_member(leader)
            assert not ens.members[leader].running
            ens.wait_serving(timeout=30.0)
            survivors = [m for m in ens.members if m.index != leader]
            assert sorted(str(m.mode()) for m in survivors) == ["follower", "leader"]

            # The already-connected client fails over; a new one only knows the survivors.
            assert zk.retry(zk.get, "/zklb/ens")[0] == b"v1"
            zk.retry(zk.set, "/zklb/ens", b"v2")
            with kazoo(",".join(m.host for m in survivors)) as zk2:
                assert zk2.get("/zklb/ens")[0] == b"v2"
                zk2.create("/zklb/written-by-two", b"x")

            ens.start_member(leader, wait=True, timeout=30.0)
            assert ens.members[leader].mode() == "follower"
            with kazoo(ens.members[leader].host) as zk3:
                zk3.sync("/zklb")
                assert zk3.get("/zklb/ens")[0] == b"v2"
                assert zk3.exists("/zklb/written-by-two") is not None

            with pytest.raises(RuntimeError, match="already running"):
                ens.start_member(leader)


def test_killed_member_and_lost_quorum() -> None:
    with ZooKeeperEnsemble(size=3) as ens:
        ens.kill_member(0)
        assert not ens.members[0].running
        assert ens.members[0].returncode == -9
        ens.wait_serving(timeout=30.0)

        ens.kill_member(1)
        # One member of three is no quorum: it must not claim to serve.
        with pytest.raises(ZooKeeperStartError, match="no serving quorum"):
            ens.wait_serving(timeout=1.0)

        ens.start_all(timeout=30.0)
        assert all(m.running and m.mode() in ("leader", "follower") for m in ens.members)


def test_stop_all_start_all_keeps_data_and_ports() -> None:
    with ZooKeeperEnsemble(size=3) as ens:
        hosts = ens.hosts
        with kazoo(hosts) as zk:
            zk.create("/zklb/persist", b"survives", makepath=True)
        old_pids = [m.pid for m in ens.members]

        ens.stop_all()
        assert not any(m.running for m in ens.members)
        with pytest.raises(OSError):
            four_letter_word(ens.members[0].client_port, "ruok", timeout=0.5)

        ens.start_all(timeout=30.0)
        assert ens.hosts == hosts
        assert all(m.running for m in ens.members)
        assert {m.pid for m in ens.members}.isdisjoint(old_pids)
        with kazoo(hosts) as zk:
            assert zk.get("/zklb/persist")[0] == b"survives"


def test_close_leaves_no_process_and_no_directory(tmp_path: Path) -> None:
    ens = ZooKeeperEnsemble(size=3, base_dir=tmp_path).start()
    pids = [m.pid for m in ens.members]
    root = ens.root_dir
    assert root.parent == tmp_path
    assert all(pid is not None for pid in pids)
    ens.close()
    ens.close()
    assert all(process_gone(pid, root) for pid in pids if pid is not None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        _ = ens.hosts


def test_failed_start_reports_log_tail_and_leaves_nothing_behind(tmp_path: Path) -> None:
    ens = ZooKeeperEnsemble(size=1, base_dir=tmp_path, extra_config={"tickTime": "not-a-number"})
    with pytest.raises(ZooKeeperStartError) as excinfo:
        ens.start(timeout=30.0)
    message = str(excinfo.value)
    assert "exited with status" in message
    assert "not-a-number" in message  # ZooKeeper's own complaint, from the log tail
    assert list(tmp_path.iterdir()) == []
    ens.close()


def test_port_taken_before_zookeeper_binds_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_reserve = _ports.reserve_ports
        calls: list[int] = []

        def reserve_with_race(count: int) -> list[int]:
            ports = real_reserve(count)
            calls.append(count)
            if len(calls) == 1:
                ports[0] = taken
            return ports

        monkeypatch.setattr(_ports, "reserve_ports", reserve_with_race)
        with ZooKeeperEnsemble(size=1) as ens:
            assert len(calls) == 2
            assert ens.members[0].client_port != taken
            assert ens.members[0].mode() == "standalone"


def test_missing_installation_names_the_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ZooKeeperNotInstalled, match=re.escape(INSTALL_HINT)):
        ZooKeeperEnsemble(size=1, classpath=str(tmp_path / "zookeeper.jar"))
    with pytest.raises(ZooKeeperNotInstalled, match=re.escape(INSTALL_HINT)):
        ZooKeeperEnsemble(size=1, java=str(tmp_path / "java"))

    monkeypatch.setenv("ZKLB_JAVA", str(tmp_path / "java"))
    assert not zookeeper_available()
    with pytest.raises(ZooKeeperNotInstalled, match="ZKLB_JAVA"):
        ZooKeeperEnsemble(size=1)

    monkeypatch.delenv("ZKLB_JAVA")
    monkeypatch.setenv("ZKLB_ZOOKEEPER_CLASSPATH", str(tmp_path / "lib" / "*"))
    with pytest.raises(ZooKeeperNotInstalled, match="ZKLB_ZOOKEEPER_CLASSPATH"):
        testing.find_zookeeper()

    monkeypatch.setenv("ZKLB_ZOOKEEPER_CLASSPATH", "/usr/share/java/zookeeper.jar")
    found = testing.find_zookeeper()
    assert found.classpath == "/usr/share/java/zookeeper.jar"
    assert Path(found.java).name.startswith("java")
