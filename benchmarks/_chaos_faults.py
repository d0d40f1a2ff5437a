"""The faults of ``benchmarks/chaos.py``: the HTTP backends it kills and restarts, and `Chaos`, the
scheduler with one method per fault (leader kill, backend kill, session expiry, full outage), each
bounded by deadlines and followed by a measurement of how fast the balancer converges."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from zklb import LoadBalancer, Registration, Registry, ZklbError
from zklb.testing import HTTPBackend, HTTPBackendHandler, ZooKeeperEnsemble, expire_session

SERVICE = "chaos"

#: Deadlines: every wait of the scenario ends by itself.
ZK_START_TIMEOUT = 90.0
ZK_SERVING_TIMEOUT = 30.0
EJECT_TIMEOUT = 10.0
CONVERGE_TIMEOUT = 30.0
REREGISTER_TIMEOUT = 30.0


# --------------------------------------------------------------------------- HTTP backends


class _Handler(HTTPBackendHandler):
    timeout = 5  # an idle keep-alive connection does not hold a thread for long

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        backend = self.backend
        assert isinstance(backend, Backend)
        backend.hit()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class Backend(HTTPBackend):
    """A tiny HTTP server on 127.0.0.1 (``GET`` answers ``ok``) that can be killed and started again on
    the same port."""

    def __init__(self, name: str) -> None:
        self.hits = 0
        self._lock = threading.Lock()
        super().__init__(_Handler, name=name)
        self.start()

    def hit(self) -> None:
        with self._lock:
            self.hits += 1


# --------------------------------------------------------------------------- the scenario


@dataclasses.dataclass
class Findings:
    eject: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)
    converge: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    anomalies: list[str] = dataclasses.field(default_factory=list)


class Chaos:
    """The fault scheduler: one method per fault, each bounded by deadlines."""

    def __init__(
        self,
        *,
        ensemble: ZooKeeperEnsemble,
        registrar: KazooClient,
        registry: Registry,
        registrations: Sequence[Registration],
        backends: Sequence[Backend],
        spare: Backend,
        lb: LoadBalancer,
        started: float,
        outage: float,
        backend_down: float,
    ) -> None:
        self.ensemble = ensemble
        self.registrar = registrar
        self.registry = registry
        self.registrations = registrations
        self.backends = backends
        self.spare = spare
        self.lb = lb
        self.started = started
        self.outage = outage
        self.backend_down = backend_down
        self.findings = Findings()
        self._kills = 0

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def anomaly(self, message: str) -> None:
        self.findings.anomalies.append(f"+{time.monotonic() - self.started:.1f}s {message}")
        self.say(f"ANOMALY: {message}")

    # -- faults ------------------------------------------------------------------------------------------

    def leader_kill(self) -> None:
        leader = next((m.index for m in self.ensemble.members if m.mode() == "leader"), None)
        if leader is None:
            self.anomaly("no ZooKeeper leader to kill")
            return
        self.findings.faults["leader kill"] += 1
        start = time.monotonic()
        self.ensemble.kill_member(leader)
        self.say(f"leader kill: member {leader} SIGKILLed")
        self.ensemble.wait_serving(timeout=ZK_SERVING_TIMEOUT)
        self.say(f"leader kill: quorum with a new leader after {time.monotonic() - start:.1f} s")
        self.converge("after leader kill")
        self.ensemble.start_member(leader, wait=True, timeout=ZK_START_TIMEOUT)
        self.say(f"leader kill: member {leader} serving again")

    def backend_kill(self) -> None:
        index = self._kills % len(self.backends)
        self._kills += 1
        backend, key = self.backends[index], self.registrations[index].instance.id
        self.findings.faults["backend kill"] += 1
        start = time.monotonic()
        backend.kill()
        self.say(f"backend kill: {backend.name} ({backend.url}) killed")
        deadline = start + EJECT_TIMEOUT
        took: float | None = None
        while time.monotonic() < deadline:
            stats = self.lb.stats().get(key)
            if stats is not None and stats.ejected:
                took = time.monotonic() - start
                break
            time.sleep(0.005)
        self.findings.eject.append((backend.name, took))
        if took is None:
            ejected = [k for k, s in self.lb.stats().items() if s.ejected]
            self.anomaly(f"{backend.name} not ejected within {EJECT_TIMEOUT:g} s (ejected now: {ejected})")
        else:
            self.say(f"backend kill: {backend.name} ejected {took * 1000:.0f} ms after the kill")
        time.sleep(self.backend_down)
        backend.start()
        self.say(f"backend kill: {backend.name} restarted on port {backend.port}")
        self.converge("after backend restart")

    def session_expiry(self) -> None:
        self.findings.faults["session expiry"] += 1
        old = self.registrar.client_id[0] if self.registrar.client_id is not None else None
        start = time.monotonic()
        expire_session(self.registrar, self.ensemble.hosts, timeout=ZK_SERVING_TIMEOUT)
        self.say(f"session expiry: registrar's session 0x{old or 0:x} expired")
        keys = {r.instance.id for r in self.registrations}
        # ZooKeeper first (the znodes under the new session), then the balancer's pool (which may or
        # may not have seen them go, depending on how fast the Registry re-created them).
        owned = _wait(lambda: self._owned_by_new_session(old), REREGISTER_TIMEOUT)
        back = self.lb.wait_for(
            lambda m: keys <= m.by_id.keys(), max(0.0, start + REREGISTER_TIMEOUT - time.monotonic())
        )
        took = time.monotonic() - start
        if not (owned and back):
            where = "in ZooKeeper" if not owned else "in the balancer's pool"
            self.anomaly(f"registrations not back {where} {REREGISTER_TIMEOUT:g} s after the expiry")
            self.findings.converge.append(("re-registered after expiry", None))
        else:
            self.findings.converge.append(("re-registered after expiry", took))
            self.say(f"session expiry: all registrations back under a new session after {took:.2f} s")
        self.converge("after session expiry")

    def full_outage(self) -> None:
        self.findings.faults["full outage"] += 1
        self.ensemble.stop_all()
        self.say(f"full outage: every ZooKeeper member stopped for {self.outage:g} s")
        time.sleep(self.outage)
        start = time.monotonic()
        self.ensemble.start_all(timeout=ZK_START_TIMEOUT)
        self.say(f"full outage: ensemble serving again ({time.monotonic() - start:.1f} s to start)")
        self.converge("after full outage")

    # -- measurements --------------------------------------------------------------------------------------

    def converge(self, label: str) -> None:
        """Register the spare backend, then deregister it; time each until the balancer's pool shows it."""
        start = time.monotonic()
        try:
            registration = self.registry.register(SERVICE, self.spare.url)
        except ZklbError as exc:
            self.anomaly(f"{label}: register() raised {exc!r}")
            self.findings.converge.append((f"add {label}", None))
            return
        key = registration.instance.id
        registered = time.monotonic() - start
        added = self.lb.wait_for(lambda m: key in m.by_id, CONVERGE_TIMEOUT)
        add = time.monotonic() - start
        start = time.monotonic()
        registration.close()
        deleted = time.monotonic() - start
        removed = self.lb.wait_for(lambda m: key not in m.by_id, CONVERGE_TIMEOUT)
        remove = time.monotonic() - start
        self.findings.converge.append((f"add {label}", add if added else None))
        self.findings.converge.append((f"remove {label}", remove if removed else None))
        if not added:
            self.anomaly(
                f"{label}: the balancer did not see a new registration within {CONVERGE_TIMEOUT:g} s"
            )
        if not removed:
            self.anomaly(f"{label}: the balancer still had a removed one after {CONVERGE_TIMEOUT:g} s")
        self.say(
            f"converge {label}: add seen in {add:.2f} s (register() {registered:.2f} s), "
            f"removal in {remove:.2f} s (close() {deleted:.2f} s)"
        )

    def _owned_by_new_session(self, old: int | None) -> bool:
        try:
            pending = [self.registrar.exists_async(r.path) for r in self.registrations]
            owners = [result.get(timeout=5.0) for result in pending]
        except (KazooException, TimeoutError):
            return False
        return all(stat is not None and stat.ephemeralOwner != old for stat in owners)


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
