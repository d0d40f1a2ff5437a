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

    def output(self) -> str:
        return self._log_path.read_text(errors="replace")

    def create(self, path: str, data: str, *, ephemeral: bool = False, sequential: bool = False) -> str:
        """``create [-s] [-e] path 'data'``; returns the path zkCli reports it created.

        A persistent znode that already exists (a parent another test made) is fine.
        """
        assert "'" not in data, "zkCli quotes the data in single quotes"
        flags = ("-s " if sequential else "") + ("-e " if ephemeral else "")
        start = len(self.output())
        self._send(f"create {flags}{path} '{data}'")
        deadline = time.monotonic() + TIMEOUT
        while True:
            for line in self.output()[start:].splitlines():
                if line.startswith("Created "):
                    return line.split(" ", 1)[1].strip()
                if line.strip() == f"Node already exists: {path}" and not (ephemeral or sequential):
                    return path
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
