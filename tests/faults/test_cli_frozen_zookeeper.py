"""The ``zklb`` command against a ZooKeeper that accepts connections and never answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from zklb.testing import ZooKeeperEnsemble


def test_timeout_holds_against_a_frozen_zookeeper() -> None:
    command = ["services"]  # every subcommand connects through the same cli._common.connect()
    # SIGSTOP: the TCP connection is accepted by the kernel, the handshake is never answered (a hung JVM,
    # a black-holed network). kazoo's own start(timeout) would stop the client inline on its timeout and
    # so wait out the 10 s session timeout; --timeout must be what the operator waits.
    with ZooKeeperEnsemble(size=1) as zk:
        hosts = zk.hosts
        member = zk.members[0]
        assert member.pid is not None
        os.kill(member.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "zklb", *command, "--hosts", hosts, "--timeout", "2"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            took = time.monotonic() - started
        finally:
            os.kill(member.pid, signal.SIGCONT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"zklb {command[0]}: ZooKeeper at {hosts} not reachable within 2 s"
    ]
    # 2 s plus an interpreter start; the defect took the session timeout (10 s) on top.
    assert took < 8.0, f"--timeout 2 took {took:.1f} s"
