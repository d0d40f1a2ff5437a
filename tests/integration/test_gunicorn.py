"""`zklb.gunicorn` under a real gunicorn with 4 workers against the real ensemble.

The app is a plain WSGI function in a temporary directory; the test reads ZooKeeper from outside, as a
client service would, and talks HTTP to the server on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gunicorn.config
import httpx
import pytest
from kazoo.client import KazooClient

from zklb import ServiceWatcher
from zklb.testing import wait_until

WORKERS = 4

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

# gunicorn 25+ opens a control socket at a fixed path by default: parallel test runs would share it.
NO_CONTROL_SOCKET = (
    ["--no-control-socket"]
    if any(setting.name == "control_socket_disable" for setting in gunicorn.config.KNOWN_SETTINGS)
    else []
)


class Gunicorn:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def booted_workers(self) -> int:
        return len(re.findall(r"Booting worker with pid", self.text()))


@pytest.fixture
def run_gunicorn(tmp_path: Path, zk_hosts: str, service: str) -> Iterator[Gunicorn]:
    (tmp_path / "app.py").write_text(APP)
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "ZKLB_SERVICE": service, "ZKLB_HOSTS": zk_hosts, "ZKLB_DRAIN": "2"}
    env.pop("ZKLB_URL", None)
    env.pop("ZKLB_ROOT", None)
    command = [sys.executable, "-m", "gunicorn", "-c", "python:zklb.gunicorn", "-w", str(WORKERS)]
    command += ["-b", "127.0.0.1:0", "--chdir", str(tmp_path), *NO_CONTROL_SOCKET, "app:app"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(process, log)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_one_znode_per_arbiter_drained_then_gone_after_sigterm(
    run_gunicorn: Gunicorn, zk: KazooClient, service: str
) -> None:
    server = run_gunicorn
    wait_until(lambda: server.booted_workers() == WORKERS, 30, f"{WORKERS} workers to boot\n{server.text()}")
    with ServiceWatcher(zk, service) as watcher:
        assert watcher.wait_for(lambda m: len(m) == 1, timeout=10), server.text()
        (instance,) = watcher.membership.instances
        # Every worker has booted (and would have registered by now if registration were per worker).
        assert httpx.get(instance.url, timeout=5).text == "ok"
        zk.sync(watcher.path)
        assert len(zk.get_children(watcher.path)) == 1

        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert watcher.wait_for(lambda m: any(i.draining for i in m), timeout=1.5), server.text()
        assert httpx.get(instance.url, timeout=5).text == "ok"  # workers still serve during the drain

        def gone() -> bool:
            zk.sync(watcher.path)
            return not zk.get_children(watcher.path)

        wait_until(gone, 3.0 - (time.monotonic() - sent), f"the znode to go\n{server.text()}", interval=0.01)
        removed_after = time.monotonic() - sent
    assert removed_after >= 2.0 - 0.05  # the drain was waited out first
    assert server.process.wait(timeout=30) == 0, server.text()
    assert "zklb: deregistered" in server.text()


def test_sigint_skips_the_drain_and_on_exit_deregisters(
    run_gunicorn: Gunicorn, zk: KazooClient, service: str
) -> None:
    server = run_gunicorn
    wait_until(lambda: server.booted_workers() == WORKERS, 30, f"{WORKERS} workers to boot\n{server.text()}")
    path = f"/services/{service}"
    wait_until(lambda: zk.exists(path) and zk.get_children(path), 10, f"the registration\n{server.text()}")
    server.process.send_signal(signal.SIGINT)  # quick shutdown: gunicorn's own, no drain
    assert server.process.wait(timeout=30) == 0, server.text()
    zk.sync(path)
    assert zk.get_children(path) == [], server.text()
    assert "zklb: draining" not in server.text()
