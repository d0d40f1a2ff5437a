"""`Registry.close_on_signal`: a real process holding a registration gets SIGTERM.

The process under test is a real Python subprocess registered in the real ensemble; the test watches
the znode from outside, as another service would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from zklb import ConfigurationError, Registry, ServiceWatcher
from zklb.testing import wait_until

DRAIN = 1.5

# The main loop keeps taking the registry's lock, so the signal often lands while the main thread holds it:
# the handler must neither deadlock nor stop that loop from running on during the drain.
CHILD = """
import signal, sys, time
import zklb
from zklb import Registry

hosts, service, mode, drain = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
if mode == "chain":
    def previous(signum, frame):
        print("previous handler ran", flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, previous)
if mode == "discovery":
    discovery = zklb.connect(hosts)
    discovery.register(service, "http://127.0.0.1:8080", id="one")
    discovery.close_on_signal(signal.SIGTERM, drain=drain)
    registry = discovery.registry
else:
    registry = Registry(hosts)
    registry.register(service, "http://127.0.0.1:8080", id="one")
    registry.close_on_signal(signal.SIGTERM, drain=drain)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    registry.registrations()
    time.sleep(0.001)
sys.exit(3)
"""


@pytest.fixture
def spawn(zk_hosts: str, service: str) -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def start_child(zk_hosts: str, service: str, mode: str, children: list[subprocess.Popen[str]]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, zk_hosts, service, mode, str(DRAIN)],
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"


def sigterm_and_follow(child: subprocess.Popen[str], zk: KazooClient, watcher: ServiceWatcher) -> float:
    """SIGTERM the child; return how long the znode lived after it, having checked it drained first."""
    path = f"{watcher.path}/one"
    assert watcher.wait_for(lambda m: len(m) == 1, timeout=10)
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    # Out of rotation at once: well before the drain period ends, the znode says OUT_OF_SERVICE.
    assert watcher.wait_for(lambda m: any(i.draining for i in m), timeout=DRAIN * 0.8)
    assert zk.exists(path) is not None

    def gone() -> bool:
        zk.sync(path)
        return zk.exists(path) is None

    wait_until(gone, DRAIN + 1.0, "the znode to be deleted", interval=0.01)
    return time.monotonic() - sent


@pytest.mark.parametrize("holder", ["registry", "discovery"])
def test_sigterm_drains_deletes_then_dies_of_sigterm(
    zk_hosts: str, service: str, zk: KazooClient, spawn: list[subprocess.Popen[str]], holder: str
) -> None:
    start_child(zk_hosts, service, "default" if holder == "registry" else holder, spawn)
    with ServiceWatcher(zk, service) as watcher:
        lived = sigterm_and_follow(spawn[0], zk, watcher)
    assert lived >= DRAIN - 0.05  # it waited out the drain before deleting
    assert spawn[0].wait(timeout=10) == -signal.SIGTERM  # ended as the unhandled signal ends a process


def test_sigterm_chains_to_the_previous_handler(
    zk_hosts: str, service: str, zk: KazooClient, spawn: list[subprocess.Popen[str]]
) -> None:
    start_child(zk_hosts, service, "chain", spawn)
    with ServiceWatcher(zk, service) as watcher:
        sigterm_and_follow(spawn[0], zk, watcher)
    assert spawn[0].wait(timeout=10) == 7
    assert spawn[0].stdout is not None
    assert "previous handler ran" in spawn[0].stdout.read()


def test_close_on_signal_only_from_the_main_thread() -> None:
    registry = Registry("127.0.0.1:1")  # never connects: installing a handler needs no ZooKeeper
    before = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            registry.close_on_signal(signal.SIGTERM)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], ConfigurationError)
    assert "main thread" in str(errors[0])
    with pytest.raises(ConfigurationError):
        registry.close_on_signal(signal.SIGKILL)
    with pytest.raises(ConfigurationError):
        registry.close_on_signal(signal.SIGTERM, drain=-1)
    assert signal.getsignal(signal.SIGTERM) == before  # nothing installed by the refused calls
    registry.close()
