"""The ``zklb`` command, run as a real subprocess against the real ensemble."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from zklb import Registry
from zklb.testing import wait_until

COMMAND = [sys.executable, "-m", "zklb"]
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1 of loopback


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKLB_")}
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def run_side_by_side(*commands: list[str], timeout: float = 30) -> list[subprocess.CompletedProcess[str]]:
    """Like `run` for each of ``commands``, all at once (each waits mostly for ZooKeeper or a timeout)."""
    procs = [spawn(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    try:
        done = []
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
        return done
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def spawn(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKLB_")}
    proc: subprocess.Popen[str] = subprocess.Popen([*COMMAND, *args], text=True, env=env, **kwargs)  # type: ignore[call-overload]
    return proc


@pytest.fixture
def root() -> str:
    """A registry root of the test's own, so that ``services`` sees only what the test made."""
    return f"/cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry(zk: KazooClient, root: str) -> Iterator[Registry]:
    with Registry(zk, root=root) as reg:
        yield reg


def common(zk_hosts: str, root: str) -> list[str]:
    return ["--hosts", zk_hosts, "--root", root, "--timeout", "10"]


# -- errors ---------------------------------------------------------------------------------------------


def test_unreachable_zookeeper_is_one_line_and_exit_2() -> None:
    subs = [
        ["services"],
        ["instances", "api"],
        ["pick", "api"],
        ["watch", "api"],
        ["register", "api", "http://h:1"],
    ]
    results = run_side_by_side(*([*sub, "--hosts", UNREACHABLE, "--timeout", "0.5"] for sub in subs))
    for sub, result in zip(subs, results, strict=True):
        assert result.returncode == 2, sub
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"zklb {sub[0]}: ZooKeeper at {UNREACHABLE} not reachable within 0.5 s"
        ]


def test_unknown_service_exits_3(zk_hosts: str, root: str, registry: Registry) -> None:
    registry.register("known", "http://127.0.0.1:9001")
    subs = ("instances", "pick", "watch")
    results = run_side_by_side(*([sub, "missing", *common(zk_hosts, root)] for sub in subs))
    for sub, result in zip(subs, results, strict=True):
        assert result.returncode == 3, result.stderr
        assert (
            result.stderr.strip() == f"zklb {sub}: unknown service 'missing': no {root}/missing in ZooKeeper"
        )


def test_bad_arguments_exit_2_with_argparse_message() -> None:
    results = run_side_by_side(["pick", "api", "-n", "0"], ["pick", "api", "--strategy", "nope"], [])
    assert [r.returncode for r in results] == [2, 2, 2]
    assert "must be at least 1" in results[0].stderr
    assert "invalid choice: 'nope'" in results[1].stderr


# -- one-shot subcommands ---------------------------------------------------------------------------------


def test_services_and_instances_show_what_a_client_balances_and_what_it_skips(
    zk: KazooClient, zk_hosts: str, root: str, registry: Registry
) -> None:
    a = registry.register("api", "http://127.0.0.1:9001", weight=3, metadata={"zone": "a"}, id="a")
    registry.register("api", "http://127.0.0.1:9002", id="b").drain()
    registry.register("web", "http://127.0.0.1:9003", id="w")
    zk.create(f"{root}/api/broken", b"not json")

    services = run("services", "--json", *common(zk_hosts, root))
    assert services.returncode == 0, services.stderr
    assert json.loads(services.stdout) == [
        {"service": "api", "instances": 2},
        {"service": "web", "instances": 1},
    ]

    result = run("instances", "api", "--json", *common(zk_hosts, root))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(i["id"], i["url"], i["weight"], i["status"]) for i in doc["instances"]] == [
        ("a", "http://127.0.0.1:9001", 3, "up"),
        ("b", "http://127.0.0.1:9002", 1, "draining"),
    ]
    assert doc["instances"][0]["metadata"] == dict(a.instance.metadata)
    assert doc["instances"][0]["registered"] is not None
    assert [s["id"] for s in doc["skipped"]] == ["broken"]
    assert "not JSON" in doc["skipped"][0]["reason"]

    plain = run("instances", "api", *common(zk_hosts, root))
    assert plain.returncode == 0
    assert "http://127.0.0.1:9001" in plain.stdout and "zone=a" in plain.stdout
    assert "skipped broken: znode data is not JSON" in plain.stdout


@pytest.mark.parametrize("codec", ["dubbo", "serverset"])
def test_codec_option_reads_other_registries_formats(
    zk: KazooClient, zk_hosts: str, root: str, codec: str
) -> None:
    service = f"com.foo.Demo{uuid.uuid4().hex[:8]}"
    with Registry(zk, root=root, codec=codec) as registry:
        registry.register(service, "http://127.0.0.1:9001", weight=7)
        registry.register(service, "http://127.0.0.1:9002")
        args = (*common(zk_hosts, root), "--codec", codec)

        listed = run("instances", service, "--json", *args)
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert sorted((i["url"], i["weight"]) for i in doc["instances"]) == [
            ("http://127.0.0.1:9001", 7 if codec == "dubbo" else 1),  # a ServerSet member has no weight
            ("http://127.0.0.1:9002", 1),  # the registry writes the weight it is given
        ]
        assert doc["skipped"] == []
        services = run("services", "--json", *args)
        assert json.loads(services.stdout) == [{"service": service, "instances": 2}], services.stderr
        picked = run("pick", service, "-n", "4", "--json", *args)
        assert picked.returncode == 0, picked.stderr
        assert sum(json.loads(picked.stdout)["picks"].values()) == 4

        # Read as Curator's format, the same znodes are not instances: the option is what makes them so.
        as_curator = run("instances", service, "--json", *common(zk_hosts, root))
        curator_doc = json.loads(as_curator.stdout) if as_curator.returncode == 0 else {"instances": []}
        assert curator_doc["instances"] == []


def test_services_through_a_chroot(zk_hosts: str, root: str, registry: Registry) -> None:
    registry.register("api", "http://127.0.0.1:9001")
    result = run("services", "--json", "--hosts", zk_hosts + root, "--root", "/")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"service": "api", "instances": 1}]


def test_instances_and_pick_through_a_chroot_with_the_default_root(zk: KazooClient, zk_hosts: str) -> None:
    chroot = f"/cli-chroot-{uuid.uuid4().hex[:10]}/prod"
    zk.ensure_path(chroot)
    with Registry(zk_hosts + chroot) as registry:  # written through the chroot, at /services/api inside it
        registry.register("api", "http://127.0.0.1:9001", id="a")
        listed = run("instances", "api", "--json", "--hosts", zk_hosts + chroot, "--timeout", "10")
        assert listed.returncode == 0, listed.stderr
        assert [i["id"] for i in json.loads(listed.stdout)["instances"]] == ["a"]
        picked = run("pick", "api", "-n", "2", "--json", "--hosts", zk_hosts + chroot, "--timeout", "10")
        assert picked.returncode == 0, picked.stderr
        assert json.loads(picked.stdout)["picks"] == {"http://127.0.0.1:9001": 2}


def test_pick_spreads_by_strategy(zk_hosts: str, root: str, registry: Registry) -> None:
    registry.register("api", "http://127.0.0.1:9001", weight=3)
    registry.register("api", "http://127.0.0.1:9002", weight=1)
    result = run(
        "pick", "api", "--strategy", "weighted_round_robin", "-n", "40", "--json", *common(zk_hosts, root)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["picks"] == {"http://127.0.0.1:9001": 30, "http://127.0.0.1:9002": 10}


def test_pick_with_a_key_sticks_to_one_server(zk_hosts: str, root: str, registry: Registry) -> None:
    for port in (9001, 9002, 9003):
        registry.register("api", f"http://127.0.0.1:{port}")
    args = ("pick", "api", "--strategy", "consistent_hash", "--key", "user-42", "-n", "30", "--json")
    result = run(*args, *common(zk_hosts, root))
    assert result.returncode == 0, result.stderr
    assert list(json.loads(result.stdout)["picks"].values()) == [30]


# -- register -------------------------------------------------------------------------------------------


def test_register_holds_until_sigterm_then_drains_and_deregisters(
    zk: KazooClient, zk_hosts: str, root: str
) -> None:
    proc = spawn(
        "register", "api", "http://127.0.0.1:9005", "--weight", "2", "--meta", "zone=b", "--drain", "0.5",
        "--json", *common(zk_hosts, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        path = doc["path"]
        assert doc["instance"]["weight"] == 2 and doc["instance"]["metadata"] == {"zone": "b"}
        assert zk.exists(path) is not None
        proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: b"OUT_OF_SERVICE" in (zk.get(path)[0] if zk.exists(path) else b"gone"), 10, "drain"
        )
        wait_until(lambda: zk.exists(path) is None, 10, "deregistration")
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out == "" and err == ""


# -- watch ----------------------------------------------------------------------------------------------


def test_watch_json_one_line_per_change_through_a_pipe(zk_hosts: str, root: str, registry: Registry) -> None:
    registry.register("api", "http://127.0.0.1:9001", id="a")
    proc = spawn(
        "watch", "api", "--json", *common(zk_hosts, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert (first["version"], first["connection"]) == (1, "connected")
        assert [i["id"] for i in first["instances"]] == ["a"]
        b = registry.register("api", "http://127.0.0.1:9002", id="b")
        second = json.loads(proc.stdout.readline())  # flushed at once, or this blocks
        assert second["version"] > first["version"]  # the first membership is not printed twice
        assert [i["id"] for i in second["instances"]] == ["a", "b"]
        b.update(weight=7)
        third = json.loads(proc.stdout.readline())
        assert [i["weight"] for i in third["instances"]] == [1, 7]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert out == "" and err == ""


def _read_until(fd: int, text: str, timeout: float) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, (
            f"{text!r} not shown within {timeout} s; screen so far: {seen.decode(errors='replace')}"
        )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 65536)
    return seen.decode(errors="replace")


def test_watch_redraws_in_a_terminal_and_quits_on_ctrl_c(
    zk_hosts: str, root: str, registry: Registry
) -> None:
    registry.register("api", "http://127.0.0.1:9001", id="a")
    master, slave = pty.openpty()
    proc = spawn("watch", "api", *common(zk_hosts, root), stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        screen = _read_until(master, "http://127.0.0.1:9001", 15)
        assert "version 1" in screen and "ZooKeeper connected" in screen
        registry.register("api", "http://127.0.0.1:9002", id="b").drain()
        screen = _read_until(master, "draining", 15)
        assert "\x1b[2J" in screen  # redrawn, not appended
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        try:
            rest = os.read(master, 65536).decode(errors="replace")
        except OSError:  # Linux: EIO once the child's side is closed
            rest = ""
        assert "Traceback" not in screen + rest
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


# -- demo -----------------------------------------------------------------------------------------------


def test_demo_kills_drains_and_brings_back_without_a_failed_request(zk_hosts: str, root: str) -> None:
    result = run("demo", "--json", "--phase-seconds", "0.4", *common(zk_hosts, root), timeout=90)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["failed"] == 0 and doc["requests"] > 0
    steady, killed, draining, back = doc["phases"]
    states = [{r["server"]: (r["balancer"], r["served"]) for r in p["servers"]} for p in doc["phases"]]
    assert all(served > 0 for _, served in states[0].values())
    assert states[1]["bravo"] == ("ejected", 0) and killed["failed"] == 0
    assert states[2]["charlie"] == ("draining", 0) and draining["failed"] == 0
    assert states[3]["bravo"][0] == "up" and states[3]["bravo"][1] > 0
    assert steady["failed"] == back["failed"] == 0
