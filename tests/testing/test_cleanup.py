"""`zklb.testing` leaves nothing behind when the process holding an ensemble is killed.

A real child Python process starts a real standalone ZooKeeper and reports its data directory and the
server's pid; the test then signals the child and looks, with a deadline, for what is left.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from zklb.testing import wait_until

CHILD = """
import json, sys, time
from zklb.testing import ZooKeeperEnsemble

ens = ZooKeeperEnsemble(size=1, base_dir=sys.argv[1]).start()
print(json.dumps({"root": str(ens.root_dir), "pid": ens.members[0].pid}), flush=True)
time.sleep(120)
"""


def processes_using(path: Path) -> list[int]:
    """Pids of live processes whose command line names ``path`` (the ZooKeeper server's config does)."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """True while ``pid`` runs: gone, or a zombie (its new parent may reap it late), is not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def child_with_zookeeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        root, pid = Path(started["root"]), int(started["pid"])
        assert root.is_dir() and processes_using(root) == [pid]
        yield child, root, pid
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_leaves_no_server_and_no_directory(
    child_with_zookeeper: tuple[subprocess.Popen[str], Path, int],
) -> None:
    child, root, _ = child_with_zookeeper
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM  # still ends as SIGTERM ends a process
    wait_until(lambda: not processes_using(root), 10, f"the ZooKeeper server under {root} to end")
    assert not root.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_sigkill_of_the_holder_kills_the_server(
    child_with_zookeeper: tuple[subprocess.Popen[str], Path, int],
) -> None:
    child, root, pid = child_with_zookeeper
    child.kill()  # no handler, no atexit: only the kernel can clean up
    child.wait(timeout=30)
    wait_until(lambda: not alive(pid), 10, f"the ZooKeeper server (pid {pid}) to end")
    assert not processes_using(root)
