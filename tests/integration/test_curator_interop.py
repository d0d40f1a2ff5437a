"""Interop with a real Apache Curator x-discovery peer (tests/java/CuratorPeer.java).

The peer is compiled once per test run with ``javac`` against Debian's Curator 5.4 jars in /usr/share/java
and run as a separate JVM: ``query``/``provider`` print what Curator reads, ``register`` keeps an instance
registered by Curator until told to quit. Missing Java or Curator is a failure, not a skip: this is the
test that proves the format claim in docs/registry-format.md.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol

import pytest
from kazoo.client import KazooClient
from tests.unit.test_codecs import URI_CASES
from tests.unit.test_codecs import curator as curator_doc

from zklb import Membership, Registry, ServiceWatcher
from zklb.codecs.curator import CuratorCodec
from zklb.instance import ServiceInstance
from zklb.testing import wait_until

INSTALL_HINT = "apt-get install -y libcurator-discovery-java libcurator-recipes-java default-jdk-headless"
JAVA_DIR = Path("/usr/share/java")
PEER_SOURCE = Path(__file__).resolve().parent.parent / "java" / "CuratorPeer.java"
# Curator's own jars and what they load at run time (ZooKeeper's client uses NIO: no netty needed).
# slf4j-nop keeps Curator and ZooKeeper quiet; failureaccess is bundled into Debian's guava.jar.
REQUIRED_JARS = (
    "curator-x-discovery",
    "curator-recipes",
    "curator-framework",
    "curator-client",
    "zookeeper",
    "zookeeper-jute",
    "jackson-databind",
    "jackson-core",
    "jackson-annotations",
    "guava",
    "slf4j-api",
    "slf4j-nop",
)
OPTIONAL_JARS = ("failureaccess",)
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-Xshare:auto", "-XX:+UseSerialGC", "-Xss512k")
JAVA_TIMEOUT = 30.0
WAIT = 10.0


def _missing(what: str) -> NoReturn:
    pytest.fail(f"{what}. The Curator interop tests need Java and Curator; on Debian: {INSTALL_HINT}")


@dataclass
class CuratorPeer:
    """The compiled Java peer and how to run it."""

    java: str
    classpath: str

    def command(self, *args: str) -> list[str]:
        return [self.java, *JVM_FLAGS, "-cp", self.classpath, "CuratorPeer", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=JAVA_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def run_until_failure(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run until the peer fails (or WAIT passes): a fresh JVM may reach a follower a moment behind."""
        deadline = time.monotonic() + WAIT
        while True:
            result = self.run(*args)
            if result.returncode != 0 or time.monotonic() >= deadline:
                return result
            time.sleep(0.1)

    def query(
        self, hosts: str, service: str, *, provider: bool = False, payload_class: str | None = None
    ) -> list[dict[str, Any]]:
        """What Curator returns for ``service``: queryForInstances, or ServiceProvider.getAllInstances."""
        args = [hosts, service] if payload_class is None else [hosts, service, payload_class]
        result = self.run("provider" if provider else "query", *args)
        assert result.returncode == 0, f"Curator peer failed ({result.returncode}):\n{result.stderr}"
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def wait_query(
        self,
        hosts: str,
        service: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        *,
        provider: bool = False,
        payload_class: str | None = None,
    ) -> list[dict[str, Any]]:
        """Query until ``predicate`` holds (the peer may reach a follower that lags a write by a moment)."""
        deadline = time.monotonic() + WAIT
        while True:
            found = self.query(hosts, service, provider=provider, payload_class=payload_class)
            if predicate(found) or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)


@dataclass
class CuratorRegistration:
    """A running ``CuratorPeer register`` process: one instance registered by Curator."""

    process: subprocess.Popen[str]
    stderr_path: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        # stdout is read on a thread so that waiting for a line can have a deadline.
        assert self.process.stdout is not None
        self.reader = threading.Thread(target=_pump, args=(self.process.stdout, self.lines), daemon=True)
        self.reader.start()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_line(self, expected: str, timeout: float = JAVA_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AssertionError(f"Curator peer did not print {expected} in {timeout:g} s") from None
            if line is None:
                self.process.wait(timeout=5)
                raise AssertionError(
                    f"Curator peer exited ({self.process.returncode}) before {expected}:\n{self.stderr()}"
                )
            if line.strip() == expected:
                return

    def stop(self) -> None:
        """Ask the peer to unregister and exit; fail if it does not do so cleanly."""
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.stdin.close()
        self.wait_line("BYE")
        assert self.process.wait(timeout=JAVA_TIMEOUT) == 0, self.stderr()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=JAVA_TIMEOUT)
        if self.reader is not None:
            self.reader.join(timeout=5)  # the pipe is at EOF now that the process is gone
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class RegisterWithCurator(Protocol):
    """The ``register_with_curator`` fixture: register ``127.0.0.1:port`` (0: none) through Curator."""

    def __call__(
        self, hosts: str, service: str, instance_id: str, port: int, *, weight: int = 1, ssl_port: int = 0
    ) -> CuratorRegistration: ...


@pytest.fixture(scope="session")
def curator(tmp_path_factory: pytest.TempPathFactory) -> CuratorPeer:
    """tests/java/CuratorPeer.java compiled once per run against /usr/share/java's Curator."""
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None or javac is None:
        _missing("java and javac must be on PATH")
    missing = [name for name in REQUIRED_JARS if not (JAVA_DIR / f"{name}.jar").is_file()]
    if missing:
        _missing(f"missing jars in {JAVA_DIR}: {', '.join(f'{m}.jar' for m in missing)}")
    jars = [JAVA_DIR / f"{name}.jar" for name in REQUIRED_JARS]
    jars += [JAVA_DIR / f"{name}.jar" for name in OPTIONAL_JARS if (JAVA_DIR / f"{name}.jar").is_file()]
    classes = tmp_path_factory.mktemp("curator-peer")
    classpath = ":".join(str(jar) for jar in jars)
    result = subprocess.run(
        [javac, "-nowarn", "-encoding", "UTF-8", "-d", str(classes), "-cp", classpath, str(PEER_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        _missing(f"javac could not compile {PEER_SOURCE.name}:\n{result.stderr}")
    return CuratorPeer(java=java, classpath=f"{classes}:{classpath}")


@pytest.fixture
def register_with_curator(curator: CuratorPeer, tmp_path: Path) -> Iterator[RegisterWithCurator]:
    """Start ``CuratorPeer register`` processes; every one still running at the end is killed."""
    started: list[CuratorRegistration] = []

    def start(
        hosts: str, service: str, instance_id: str, port: int, *, weight: int = 1, ssl_port: int = 0
    ) -> CuratorRegistration:
        stderr_path = tmp_path / f"curator-{instance_id}.stderr"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                curator.command(
                    "register",
                    hosts,
                    service,
                    instance_id,
                    "127.0.0.1",
                    str(port),
                    str(weight),
                    str(ssl_port),
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        registration = CuratorRegistration(process, stderr_path)
        started.append(registration)
        registration.wait_line("READY")
        return registration

    try:
        yield start
    finally:
        for registration in started:
            registration.kill()


def _znode(zk: KazooClient, path: str) -> dict[str, Any]:
    """The JSON of ``path``, read after a sync so that a lagging follower cannot hide a fresh write."""
    zk.sync(path)
    wait_until(lambda: zk.exists(path) is not None, WAIT, f"{path} to exist")
    data, _ = zk.get(path)
    doc: dict[str, Any] = json.loads(data)
    return doc


def _by_id(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in found}


def _ids(m: Membership) -> set[str]:
    return {inst.id for inst in m.instances}


# -- zklb writes, Curator reads -------------------------------------------------------------------------


def test_curator_reads_instances_registered_by_zklb(
    curator: CuratorPeer, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry:
        plain = registry.register(service, "http://127.0.0.1:8080", weight=3, metadata={"zone": "a"})
        secure = registry.register(service, "https://127.0.0.1:8443", id="secure-1")

        for provider in (False, True):
            found = _by_id(curator.wait_query(zk_hosts, service, lambda f: len(f) == 2, provider=provider))
            assert set(found) == {plain.instance.id, "secure-1"}, found

            http = found[plain.instance.id]
            assert http["name"] == service
            assert http["address"] == "127.0.0.1"
            assert http["port"] == 8080
            assert http["sslPort"] is None
            assert http["enabled"] is True
            assert http["serviceType"] == "DYNAMIC"
            # No @class in zklb's payload: Jackson falls back to Object and builds a plain map.
            assert http["payloadClass"] == "java.util.LinkedHashMap"
            assert http["metadata"] == {"weight": "3", "zone": "a"}
            assert http["uri"] == "http://127.0.0.1:8080"
            registered = plain.instance.registered_at
            assert registered is not None
            assert http["registrationTimeUTC"] == int(registered.timestamp() * 1000)

            https = found["secure-1"]
            assert https["address"] == "127.0.0.1"
            assert https["port"] is None
            assert https["sslPort"] == 8443
            assert https["metadata"] == {"weight": "1"}
        assert secure.instance.scheme == "https"


def test_curator_builds_the_uri_of_an_https_instance_registered_by_zklb(
    curator: CuratorPeer, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry:
        registry.register(service, "https://127.0.0.1:8443", id="secure-1")
        (found,) = curator.wait_query(zk_hosts, service, lambda f: len(f) == 1)
    assert found["uri"] == "https://127.0.0.1:8443"


def test_an_unknown_payload_class_breaks_curators_whole_query(
    curator: CuratorPeer, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    """Why zklb writes no ``@class``: one payload class a reader lacks fails every instance for it."""
    codec = CuratorCodec()
    good = ServiceInstance.parse("http://127.0.0.1:8081", id="good")
    zk.create(f"/services/{service}/good", codec.encode(service, good), makepath=True)
    assert len(curator.wait_query(zk_hosts, service, lambda f: len(f) == 1)) == 1

    doc = json.loads(codec.encode(service, ServiceInstance.parse("http://127.0.0.1:8082", id="typed")))
    doc["payload"]["@class"] = "com.example.NotOnTheClasspath"
    zk.create(f"/services/{service}/typed", json.dumps(doc).encode())

    result = curator.run_until_failure("query", zk_hosts, service)
    assert result.returncode != 0, result.stdout
    assert "com.example.NotOnTheClasspath" in result.stderr
    # zklb ignores @class and serves both.
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: _ids(m) == {"good", "typed"}, WAIT), watcher.membership


def test_enabled_false_is_skipped_by_zklb_and_curators_provider(
    curator: CuratorPeer, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    codec = CuratorCodec()
    for name, enabled in (("on", None), ("off", False)):
        doc = json.loads(codec.encode(service, ServiceInstance.parse("http://127.0.0.1:8080", id=name)))
        if enabled is not None:
            doc["enabled"] = enabled
        zk.create(f"/services/{service}/{name}", json.dumps(doc).encode(), makepath=True)

    queried = _by_id(curator.wait_query(zk_hosts, service, lambda f: len(f) == 2))
    assert {k: v["enabled"] for k, v in queried.items()} == {"on": True, "off": False}
    provided = curator.wait_query(zk_hosts, service, lambda f: len(f) == 1, provider=True)
    assert [entry["id"] for entry in provided] == ["on"]
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: _ids(m) == {"on"}, WAIT), watcher.membership


POJO = "CuratorPeer$PojoPayload"  # shaped like Spring Cloud Zookeeper's ZookeeperInstance


def test_readers_with_a_pojo_payload_class_reject_untyped_payloads(
    curator: CuratorPeer, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    """Spring Cloud Zookeeper reads with its own payload class; zklb's untyped payload is a Map to Jackson."""
    with Registry(zk_hosts) as registry:
        registry.register(service, "http://127.0.0.1:8080", id="py-1")
        curator.wait_query(zk_hosts, service, lambda f: len(f) == 1)
        result = curator.run_until_failure("query", zk_hosts, service, POJO)
    assert result.returncode != 0, result.stdout
    assert f"Cannot cast java.util.LinkedHashMap to {POJO}" in result.stderr

    # With "@class" naming the reader's class (what Spring itself writes) it works, and so does an
    # Object reader, while a Map reader fails: the payload class decides who can read a typed payload.
    typed = f"{service}-typed"
    doc = json.loads(CuratorCodec().encode(typed, ServiceInstance.parse("http://127.0.0.1:8081", id="typed")))
    doc["payload"] = {"@class": POJO, "id": "typed", "name": typed, "metadata": {"weight": "4"}}
    zk.create(f"/services/{typed}/typed", json.dumps(doc).encode(), makepath=True)
    for payload_class in (POJO, "java.lang.Object"):
        (found,) = curator.wait_query(zk_hosts, typed, lambda f: len(f) == 1, payload_class=payload_class)
        assert (found["id"], found["payloadClass"], found["metadata"]) == ("typed", POJO, {"weight": "4"})
    result = curator.run_until_failure("query", zk_hosts, typed, "java.util.Map")
    assert f"Cannot cast {POJO} to java.util.Map" in result.stderr, result.stdout


def test_zklb_reads_a_spring_cloud_zookeeper_registration(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    # The shape Spring Cloud Zookeeper writes: Curator's format with a typed ZookeeperInstance payload.
    instance = ServiceInstance.parse("http://127.0.0.1:8761", id="spring-1")
    doc = json.loads(CuratorCodec().encode(service, instance))
    doc["payload"] = {
        "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "id": "app-8761",
        "name": service,
        "metadata": {"instance_status": "UP", "weight": "7"},
    }
    zk.create(f"/services/{service}/spring-1", json.dumps(doc).encode(), makepath=True)
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: "spring-1" in m, WAIT), watcher.membership
        inst = watcher.membership.by_id["spring-1"]
    assert (inst.url, inst.weight, dict(inst.metadata)) == (
        "http://127.0.0.1:8761",
        7,
        {"instance_status": "UP"},
    )


# -- Curator writes, zklb reads -------------------------------------------------------------------------


def test_zklb_serves_an_instance_registered_by_curator(
    register_with_curator: RegisterWithCurator, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    with ServiceWatcher(zk_hosts, service) as watcher:
        peer = register_with_curator(zk_hosts, service, "java-1", 9090, weight=5)

        raw = _znode(zk, f"/services/{service}/java-1")
        assert raw["payload"] == {"@class": "java.util.LinkedHashMap", "metadata": {"weight": "5"}}
        assert "enabled" not in raw  # Curator 5.4's default serializer writes the pre-"enabled" format

        assert watcher.wait_for(lambda m: "java-1" in m, WAIT), watcher.membership
        inst = watcher.membership.by_id["java-1"]
        assert (inst.host, inst.port, inst.scheme, inst.weight) == ("127.0.0.1", 9090, "http", 5)
        assert inst.url == "http://127.0.0.1:9090"
        assert dict(inst.metadata) == {}  # weight is lifted out of the metadata
        assert inst.registered_at is not None

        _balancer_serves(zk_hosts, service, inst)

        peer.stop()
        assert watcher.wait_for(lambda m: "java-1" not in m, WAIT), watcher.membership


def _balancer_serves(zk_hosts: str, service: str, expected: ServiceInstance) -> None:
    # Imported here so that the other tests still run while LoadBalancer is not exported.
    from zklb import LoadBalancer  # noqa: PLC0415

    with LoadBalancer(zk_hosts, service=service) as lb:
        wait_until(lambda: expected.id in lb.membership, WAIT, f"{expected.id} in the balancer's pool")
        assert lb.get_server() == expected


def test_zklb_reads_an_https_instance_registered_by_curator(
    register_with_curator: RegisterWithCurator, zk_hosts: str, service: str
) -> None:
    with ServiceWatcher(zk_hosts, service) as watcher:
        register_with_curator(zk_hosts, service, "java-tls", 0, weight=2, ssl_port=9443)
        assert watcher.wait_for(lambda m: "java-tls" in m, WAIT), watcher.membership
        inst = watcher.membership.by_id["java-tls"]
        assert (inst.url, inst.weight) == ("https://127.0.0.1:9443", 2)


# -- both at once ---------------------------------------------------------------------------------------


def test_mixed_pool_both_sides_see_both(
    curator: CuratorPeer, register_with_curator: RegisterWithCurator, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry, ServiceWatcher(zk_hosts, service) as watcher:
        registry.register(service, "http://127.0.0.1:8080", weight=3, id="py-1")
        peer = register_with_curator(zk_hosts, service, "java-1", 9090, weight=5)

        assert watcher.wait_for(lambda m: _ids(m) == {"py-1", "java-1"}, WAIT), watcher.membership
        urls = {inst.id: (inst.url, inst.weight) for inst in watcher.membership.instances}
        assert urls == {"py-1": ("http://127.0.0.1:8080", 3), "java-1": ("http://127.0.0.1:9090", 5)}

        for provider in (False, True):
            found = _by_id(curator.wait_query(zk_hosts, service, lambda f: len(f) == 2, provider=provider))
            assert {k: (v["port"], v["metadata"]["weight"]) for k, v in found.items()} == {
                "py-1": (8080, "3"),
                "java-1": (9090, "5"),
            }

        peer.stop()
        assert watcher.wait_for(lambda m: _ids(m) == {"py-1"}, WAIT), watcher.membership


# -- uriSpec, payload classes and TLS ports, checked against Curator itself ------------------------------


def test_zklb_resolves_uri_specs_exactly_as_curator_builds_them(
    curator: CuratorPeer, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    for index, (port, ssl_port, uri, _, _) in enumerate(URI_CASES):
        doc = json.loads(curator_doc(port, ssl_port, uri))
        doc["id"] = f"case-{index}"
        zk.create(f"/services/{service}/case-{index}", json.dumps(doc).encode(), makepath=True)
    found = _by_id(curator.wait_query(zk_hosts, service, lambda f: len(f) == len(URI_CASES)))
    with ServiceWatcher(zk_hosts, service) as watcher:
        assert watcher.wait_for(lambda m: len(m) == len(URI_CASES), WAIT), watcher.membership
        for index, (_, _, _, built, served) in enumerate(URI_CASES):
            key = f"case-{index}"
            assert found[key]["uri"] == built, key  # what Curator 5.4 builds (None: no uriSpec)
            inst = watcher.membership.by_id[key]
            assert (inst.scheme, inst.port, inst.ssl_port) == served, key


def test_curator_reads_both_ports_of_a_zklb_registration(
    curator: CuratorPeer, zk_hosts: str, service: str
) -> None:
    with Registry(zk_hosts) as registry:
        registry.register(service, "http://127.0.0.1:8080", ssl_port=8443, id="both")
        (found,) = curator.wait_query(zk_hosts, service, lambda f: len(f) == 1)
    assert (found["port"], found["sslPort"], found["uri"]) == (8080, 8443, "https://127.0.0.1:8443")


SPRING_CLASS = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"


def test_who_reads_spring_payloads_written_by_zklb(
    curator: CuratorPeer, zk: KazooClient, zk_hosts: str, service: str
) -> None:
    """``payload_class="spring"`` is for Spring readers: a plain Curator reader, without Spring's class on
    its class path, fails its whole query (Map and Object alike); zklb reads both kinds."""
    with Registry(zk_hosts, codec=CuratorCodec(payload_class="spring")) as registry:
        registry.register(service, "http://127.0.0.1:8080", id="spring-1", weight=2)
        raw = _znode(zk, f"/services/{service}/spring-1")
        assert raw["payload"] == {
            "@class": SPRING_CLASS,
            "id": "spring-1",
            "name": service,
            "metadata": {"weight": "2", "instance_status": "UP"},
        }
        for payload_class in ("java.util.Map", "java.lang.Object"):
            result = curator.run_until_failure("query", zk_hosts, service, payload_class)
            assert result.returncode != 0, result.stdout
            assert SPRING_CLASS in result.stderr, result.stderr
        with ServiceWatcher(zk_hosts, service) as watcher:
            assert watcher.wait_for(lambda m: "spring-1" in m, WAIT), watcher.membership
            assert watcher.membership.by_id["spring-1"].weight == 2

    # The default (no @class) is read by the plain Curator reader.
    with Registry(zk_hosts) as registry:
        registry.register(f"{service}-plain", "http://127.0.0.1:8081", id="plain-1")
        (found,) = curator.wait_query(zk_hosts, f"{service}-plain", lambda f: len(f) == 1)
        assert (found["payloadClass"], found["metadata"]) == ("java.util.LinkedHashMap", {"weight": "1"})
