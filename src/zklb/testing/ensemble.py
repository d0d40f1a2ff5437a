"""`ZooKeeperEnsemble`: a real ZooKeeper server or ensemble on 127.0.0.1, its members started and stopped
at will."""

from __future__ import annotations

import dataclasses
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from zklb.testing import _cleanup, _ports
from zklb.testing.errors import ZooKeeperNotInstalled, ZooKeeperStartError
from zklb.testing.install import DEBIAN_JAR, ZooKeeperInstallation, find_zookeeper
from zklb.testing.member import DEFAULT_JVM_FLAGS, ZooKeeperMember, _LaunchSpec
from zklb.testing.tls import DEBIAN_TLS_JARS, TLSMaterial, find_keytool

__all__ = ["ZooKeeperEnsemble"]

_POLL_INTERVAL = 0.05
_START_ATTEMPTS = 3


def _stop_members(members: Iterable[ZooKeeperMember], timeout: float) -> None:
    """SIGTERM all at once, SIGKILL whatever is still alive after ``timeout``."""
    targets = [member for member in members if member.running]
    for member in targets:
        member._signal_stop()
    deadline = time.monotonic() + timeout
    for member in targets:
        process = member._process
        if process is None:
            continue
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            member._reap()


def _kill_members(members: Iterable[ZooKeeperMember]) -> None:
    targets = [member for member in members if member.running]
    for member in targets:
        member._kill()
    for member in targets:
        member._reap()


def _with_tls_jars(installation: ZooKeeperInstallation) -> ZooKeeperInstallation:
    """Debian's classpath plus the netty jars its TLS server needs (its manifest lacks them)."""
    entries = installation.classpath.split(os.pathsep)
    if str(DEBIAN_JAR) not in entries:
        return installation  # an upstream distribution's lib/ has every jar it needs
    missing = [jar for jar in DEBIAN_TLS_JARS if not jar.is_file()]
    if missing:
        raise ZooKeeperNotInstalled(
            f"a TLS ZooKeeper needs {', '.join(map(str, missing))} (apt-get install libnetty-java)"
        )
    classpath = os.pathsep.join([*entries, *(str(jar) for jar in DEBIAN_TLS_JARS)])
    return dataclasses.replace(installation, classpath=classpath)


class _Resources:
    """Everything that must be released; kept apart from the ensemble so a
    finalizer can release it without keeping the ensemble alive."""

    def __init__(self) -> None:
        self.members: list[ZooKeeperMember] = []
        self.root: Path | None = None

    def release(self) -> None:
        _cleanup.untrack(self)
        _kill_members(self.members)
        _ports.release_ports(port for member in self.members for port in member._ports)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.members = []
        self.root = None


class ZooKeeperEnsemble:
    """A real ZooKeeper server (``size=1``) or ensemble on 127.0.0.1.

    Args:
        size: number of members; 1 runs a standalone server.
        java: path or name of the java binary (default: ``ZKLB_JAVA``, then ``java`` on PATH).
        classpath: ZooKeeper classpath (default: ``ZKLB_ZOOKEEPER_CLASSPATH``, then the Debian jars).
        tick_time_ms: ZooKeeper ``tickTime``; failure detection between members scales with it.
        min_session_timeout_ms: the shortest session timeout clients may negotiate.
        max_session_timeout_ms: the longest session timeout clients may negotiate.
        jvm_flags: JVM options replacing :data:`DEFAULT_JVM_FLAGS`.
        extra_config: additional or overriding ``zoo.cfg`` settings.
        base_dir: parent directory for the temporary directories (default: the system temp dir).
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        tls: serve clients over TLS only (Netty, ``secureClientPort``, no plain port), with a
            self-signed certificate made by ``keytool`` for this run; :attr:`kazoo_options` then holds
            what a kazoo client needs. Traffic between members stays plain (it is on loopback).
        tls_client_auth: with ``tls``, the server also demands a client certificate (made with
            ``openssl``), which :attr:`kazoo_options` carries.

    Raises:
        ZooKeeperNotInstalled: java or ZooKeeper cannot be found.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        java: str | None = None,
        classpath: str | None = None,
        tick_time_ms: int = 200,
        min_session_timeout_ms: int = 1000,
        max_session_timeout_ms: int = 60000,
        jvm_flags: Sequence[str] | None = None,
        extra_config: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        stop_timeout: float = 10.0,
        tls: bool = False,
        tls_client_auth: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if tls_client_auth and not tls:
            raise ValueError("tls_client_auth needs tls=True")
        self._size = size
        installation = find_zookeeper(java=java, classpath=classpath)
        self._keytool: str | None = None
        if tls:
            installation = _with_tls_jars(installation)
            self._keytool = find_keytool(installation.java)
        self._tls_client_auth = tls_client_auth
        self._tls: TLSMaterial | None = None
        self._spec = _LaunchSpec(
            installation=installation,
            jvm_flags=tuple(DEFAULT_JVM_FLAGS if jvm_flags is None else jvm_flags),
        )
        self._settings: dict[str, str] = {
            "tickTime": str(tick_time_ms),
            # Generous in ticks: with three JVMs on two cores a GC pause or a
            # slow start must not make followers drop out and re-elect.
            "initLimit": "50",
            "syncLimit": "15",
            "minSessionTimeout": str(min_session_timeout_ms),
            "maxSessionTimeout": str(max_session_timeout_ms),
            "clientPortAddress": "127.0.0.1",
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "reconfigEnabled": "false",
            "standaloneEnabled": "true",
            # Test data is disposable; fsync only slows writes down.
            "forceSync": "no",
            # Transaction logs are preallocated in this size (KiB), default 64 MiB.
            "preAllocSize": "4096",
            "maxClientCnxns": "0",
        }
        self._settings.update(extra_config or {})
        self._base_dir = None if base_dir is None else Path(base_dir)
        self._stop_timeout = stop_timeout
        self._lock = threading.RLock()
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, _Resources.release, self._resources)
        self._closed = False

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> ZooKeeperEnsemble:
        if not self._resources.members:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._resources.members else "not started")
        return f"<ZooKeeperEnsemble size={self._size} {state}>"

    # -- properties ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of members."""
        return self._size

    @property
    def members(self) -> tuple[ZooKeeperMember, ...]:
        """The members, in server-id order (available after :meth:`start`)."""
        self._require_started()
        return tuple(self._resources.members)

    @property
    def hosts(self) -> str:
        """Connection string for clients: ``"127.0.0.1:p1,127.0.0.1:p2,..."``."""
        return ",".join(member.host for member in self.members)

    @property
    def tls(self) -> bool:
        """True when clients must connect over TLS (``tls=True``)."""
        return self._keytool is not None

    @property
    def kazoo_options(self) -> dict[str, Any]:
        """Options a kazoo client needs for this ensemble: ``{}`` for plain, else ``use_ssl``, ``ca``,
        ``verify_certs`` (and ``certfile``/``keyfile`` with client authentication).

        Pass them as ``KazooClient(hosts=ens.hosts, **ens.kazoo_options)`` or to zklb's
        ``kazoo_options=``. Available after :meth:`start`.
        """
        self._require_started()
        return {} if self._tls is None else self._tls.kazoo_options()

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """An `ssl.SSLContext` for raw connections (`four_letter_word`), or None without TLS."""
        self._require_started()
        return None if self._tls is None else self._tls.client_context()

    @property
    def root_dir(self) -> Path:
        """Temporary directory holding one data directory per member."""
        self._require_started()
        assert self._resources.root is not None
        return self._resources.root

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def quorum_size(self) -> int:
        """Members that must serve for the ensemble to serve (a majority)."""
        return self._size // 2 + 1

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> ZooKeeperEnsemble:
        """Create the data directories, start every member and wait until all serve.

        Ports that another process grabbed before ZooKeeper could bind them are
        replaced and the start is retried.  On failure nothing is left running
        and the temporary directory is removed.

        Raises:
            ZooKeeperStartError: a member exited or did not serve within ``timeout``.
        """
        with self._lock:
            self._require_open()
            if self._resources.members:
                raise RuntimeError("ZooKeeperEnsemble.start() called twice")
            deadline = time.monotonic() + timeout
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._create_members()
                    for member in self._resources.members:
                        member._launch()
                    self._wait(self._resources.members, deadline)
                except BaseException as exc:
                    port_race = isinstance(exc, ZooKeeperStartError) and any(
                        member._bind_failed() for member in self._resources.members
                    )
                    self._resources.release()
                    if port_race and attempt < _START_ATTEMPTS and time.monotonic() < deadline:
                        continue
                    raise
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Kill every member and remove the temporary directories. Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def stop_member(self, index: int, timeout: float | None = None) -> None:
        """Stop one member: SIGTERM, then SIGKILL after ``timeout`` (default ``stop_timeout``) seconds."""
        with self._lock:
            member = self._member(index)
            _stop_members([member], self._stop_timeout if timeout is None else timeout)

    def kill_member(self, index: int) -> None:
        """Kill one member with SIGKILL (a crash: no clean shutdown)."""
        with self._lock:
            _kill_members([self._member(index)])

    def start_member(self, index: int, wait: bool = True, timeout: float = 60.0) -> None:
        """Start a stopped member again with the same ports and data directory.

        With ``wait`` it returns once the member serves, which for an ensemble
        needs a quorum of running members.

        Raises:
            RuntimeError: the member is already running.
            ZooKeeperStartError: it exited or did not serve in time (it is killed then).
        """
        with self._lock:
            member = self._member(index)
            member._launch()
            if wait:
                self._wait_or_kill([member], time.monotonic() + timeout)

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every member; data directories and ports are kept for :meth:`start_all`."""
        with self._lock:
            self._require_started()
            _stop_members(self._resources.members, self._stop_timeout if timeout is None else timeout)

    def start_all(self, timeout: float = 60.0) -> None:
        """Start every stopped member and wait until all members serve.

        Raises:
            ZooKeeperStartError: a member exited or did not serve in time (the
                members started by this call are killed then).
        """
        with self._lock:
            self._require_started()
            stopped = [member for member in self._resources.members if not member.running]
            for member in stopped:
                member._launch()
            self._wait_or_kill(stopped, time.monotonic() + timeout, everyone=self._resources.members)

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until the ensemble serves: a majority of members serve, one of them the leader.

        Raises:
            ZooKeeperStartError: no quorum within ``timeout``.
        """
        self._require_started()
        deadline = time.monotonic() + timeout
        while True:
            modes = [member.mode(timeout=self._probe_timeout(deadline)) for member in self.members]
            serving = [mode for mode in modes if mode is not None]
            if len(serving) >= self.quorum_size and (self._size == 1 or serving.count("leader") == 1):
                return
            if time.monotonic() >= deadline:
                details = "\n\n".join(member._describe_failure() for member in self.members)
                raise ZooKeeperStartError(
                    f"ZooKeeper ensemble has no serving quorum after {timeout:.1f}s "
                    f"(modes: {modes}, need {self.quorum_size} with a leader).\n{details}"
                )
            time.sleep(_POLL_INTERVAL)

    # -- internals -----------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("ZooKeeperEnsemble is closed")

    def _require_started(self) -> None:
        self._require_open()
        if not self._resources.members:
            raise RuntimeError(
                "ZooKeeperEnsemble is not started; call start() or use it as a context manager"
            )

    def _member(self, index: int) -> ZooKeeperMember:
        members = self.members
        if not 0 <= index < len(members):
            raise IndexError(f"member index {index} out of range for an ensemble of {len(members)}")
        return members[index]

    def _create_members(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="zklb-zookeeper-", dir=self._base_dir))
        self._resources.root = root
        _cleanup.track(self._resources)  # a SIGTERM now must not leave servers or directories behind
        context: ssl.SSLContext | None = None
        settings = self._settings
        if self._keytool is not None:
            self._tls = TLSMaterial.create(root / "tls", self._keytool, client_auth=self._tls_client_auth)
            context = self._tls.client_context()
            settings = {**self._tls.server_config(), **settings}
        ports = iter(_ports.reserve_ports(3 * self._size))
        members = [
            ZooKeeperMember(
                index=index,
                client_port=next(ports),
                quorum_port=next(ports),
                election_port=next(ports),
                data_dir=root / f"member-{index + 1}",
                spec=self._spec,
                tls=context,
            )
            for index in range(self._size)
        ]
        self._resources.members = members
        for member in members:
            member._write_config(members, settings)

    @staticmethod
    def _probe_timeout(deadline: float) -> float:
        return max(0.05, min(1.0, deadline - time.monotonic()))

    def _wait(self, members: Sequence[ZooKeeperMember], deadline: float) -> None:
        """Wait until all of ``members`` serve at the same time; fail fast when one exits."""
        while True:
            exited = [member for member in members if not member.running]
            if exited:
                details = "\n\n".join(member._describe_failure() for member in exited)
                raise ZooKeeperStartError(f"ZooKeeper failed to start:\n{details}")
            pending = [member for member in members if not member.is_serving(self._probe_timeout(deadline))]
            if not pending:
                return
            if time.monotonic() >= deadline:
                details = "\n\n".join(member._describe_failure() for member in pending)
                raise ZooKeeperStartError(f"ZooKeeper did not start serving in time:\n{details}")
            time.sleep(_POLL_INTERVAL)

    def _wait_or_kill(
        self,
        started: Sequence[ZooKeeperMember],
        deadline: float,
        everyone: Sequence[ZooKeeperMember] | None = None,
    ) -> None:
        try:
            self._wait(everyone if everyone is not None else started, deadline)
        except BaseException:
            _kill_members(started)
            raise
