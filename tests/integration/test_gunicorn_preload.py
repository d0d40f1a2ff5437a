"""A LoadBalancer built in gunicorn's arbiter (--preload) keeps following ZooKeeper in every worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from zklb import Registry
from zklb.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2

pytest.importorskip("gunicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_preloaded_balancer_follows_membership_in_every_worker(zk_hosts: str, service: str) -> None:
    with Registry(zk_hosts) as registry:
        registry.register(service, "http://10.2.0.1:80", id="booted-with")
        port = free_port()
        env = {**os.environ, "ZKLB_HOSTS": zk_hosts, "ZKLB_TEST_SERVICE": service}
        command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS)]
        command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(ROOT), "tests.gunicorn_app:app"]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            seen: dict[int, list[str]] = {}

            def ask() -> None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                        answer = json.load(response)
                except OSError:
                    return  # not serving yet
                seen[answer["pid"]] = answer["ids"]

            def every_worker_sees(ids: list[str]) -> bool:
                ask()
                return len(seen) >= WORKERS and all(v == ids for v in seen.values())

            # Both workers booted and serving the pool they inherited from the arbiter...
            wait_until(lambda: every_worker_sees(["booted-with"]), 30, "both workers answering")
            assert server.poll() is None
            # ...then a backend registers: each worker's balancer must follow ZooKeeper on its own.
            registry.register(service, "http://10.2.0.2:80", id="joined-later")
            seen.clear()
            wait_until(lambda: every_worker_sees(["booted-with", "joined-later"]), 30, "workers following")
            assert len(seen) == WORKERS
        finally:
            server.terminate()
            try:
                _, errors = server.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                _, errors = server.communicate()
        assert b"Traceback" not in errors, errors.decode(errors="replace")[-3000:]
