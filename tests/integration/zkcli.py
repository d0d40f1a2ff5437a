"""ZooKeeper's own ``zkCli.sh`` as a test fixture: znodes written by ZooKeeper's CLI, not by kazoo or zklb.

A `ZkCliSession` keeps one zkCli session open (so that its ephemeral znodes live) until ``close()``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

ZKCLI_CANDIDATES = ("/usr/share/zookeeper/bin/zkCli.sh", "zkCli.sh", "zkCli")
TIMEOUT = 30.0


def find_zkcli() -> str:
    """The zkCli script Debian's zookeeper package ships (``dpkg -L zookeeper | grep -i cli``)."""
    for candidate in ZKCLI_CANDIDATES:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    pytest.fail("zkCli.sh not found; on Debian: apt-get install -y zookeeper")


class ZkCliSession:
    """One running ``zkCli.sh -server HOSTS``, fed commands on stdin; its output goes to a file."""

    def __init__(self, hosts: str, log: Path) -> None:
        self._log_path = log
        self._log = log.open("w")
        self._process = subprocess.Popen(
            [find_zkcli(), "-server", hosts],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._created = 0

    def output(self) -> str:
        return self._log_path.read_text(errors="replace")

    def create(self, path: str, data: str, *, ephemeral: bool = False, sequential: bool = False) -> str:
        """``create [-s] [-e] path 'data'``; returns the path zkCli reports it created."""
        assert "'" not in data, "zkCli quotes the data in single quotes"
        flags = ("-s " if sequential else "") + ("-e " if ephemeral else "")
        self._send(f"create {flags}{path} '{data}'")
        self._created += 1
        expected = self._created
        deadline = time.monotonic() + TIMEOUT
        while True:
            created = [
                line.split(" ", 1)[1] for line in self.output().splitlines() if line.startswith("Created ")
            ]
            if len(created) >= expected:
                return created[expected - 1].strip()
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"zkCli did not create {path}:\n{self.output()}")
            time.sleep(0.05)

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def close(self) -> None:
        """Quit (which ends the session and so its ephemeral znodes); killed if it does not in time."""
        if self._process.poll() is None:
            try:
                self._send("quit")
                self._process.stdin.close()  # type: ignore[union-attr]
                self._process.wait(timeout=TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(timeout=TIMEOUT)
        self._log.close()
