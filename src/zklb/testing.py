"""Run a real ZooKeeper (standalone or an ensemble) on 127.0.0.1 for tests.

The servers are real ZooKeeper JVMs started from the jars of the Debian
``zookeeper`` package (``apt-get install -y zookeeper default-jre-headless``)
with the machine's ``java``.  Every member gets free ports on 127.0.0.1 and its
own temporary data directory, which also holds its log file
(``zookeeper.log``).  Nothing is written to the test's stdout.

Example::

    from kazoo.client import KazooClient
    from zklb.testing import ZooKeeperEnsemble

    with ZooKeeperEnsemble(size=3) as ens:
        client = KazooClient(hosts=ens.hosts)
        client.start()
        client.create("/services/web/a", b"10.0.0.1:80", makepath=True)

        ens.stop_member(0)      # the data stays reachable through the other two
        ens.wait_serving()
        # retry: the client may have been connected to member 0 and reconnects
        assert client.retry(client.get, "/services/web/a")[0] == b"10.0.0.1:80"

        client.stop()
        client.close()

        ens.stop_all()
        ens.start_all()         # same ports and data directories: data survives

Other locations of ZooKeeper and Java can be given to the constructor or
through the environment: ``ZKLB_ZOOKEEPER_CLASSPATH`` (a Java classpath, e.g.
``/opt/zookeeper/conf:/opt/zookeeper/lib/*`` for an upstream tarball) and
``ZKLB_JAVA`` (the ``java`` binary).

Processes that are still running when the interpreter exits (or when an
unclosed ensemble is garbage collected) are stopped and their directories
removed.  A test runner killed with SIGKILL cannot clean up; the servers run
in their own sessions and have to be killed by hand then.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kazoo.client import KazooClient

__all__ = [
    "DEFAULT_JVM_FLAGS",
    "INSTALL_HINT",
    "ZooKeeperEnsemble",
    "ZooKeeperInstallation",
    "ZooKeeperMember",
    "ZooKeeperNotInstalled",
    "ZooKeeperStartError",
    "expire_session",
    "find_zookeeper",
    "four_letter_word",
    "wait_until",
    "zookeeper_available",
]

INSTALL_HINT = "apt-get install -y zookeeper default-jre-headless"
"""The command that installs what this module needs on Debian/Ubuntu."""

DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-Xms16m",
    "-Xmx128m",
    "-XX:+UseSerialGC",
    # C1 only: a test server never runs long enough for C2 to pay off, and
    # three JVMs compiling with C2 at once starve a small machine.
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true",
    "-Djava.awt.headless=true",
)
"""JVM options used unless ``jvm_flags`` is given: small heap, fast startup."""

_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_DEBIAN_JAR = Path("/usr/share/java/zookeeper.jar")
# The Debian jar's manifest pulls in slf4j-api but no slf4j binding, so
# without these two jars ZooKeeper silently logs nothing at all.
_DEBIAN_LOGGING_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
_ENV_CLASSPATH = "ZKLB_ZOOKEEPER_CLASSPATH"
_ENV_JAVA = "ZKLB_JAVA"

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%c{1}] - %m%n
"""

_SERVING_MODES = frozenset({"leader", "follower", "observer", "standalone"})
_BIND_ERROR = re.compile(r"BindException|Address already in use")
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3


class ZooKeeperNotInstalled(RuntimeError):
    """Java or the ZooKeeper jars are missing; the message says what to install."""


class ZooKeeperStartError(RuntimeError):
    """A ZooKeeper member did not start or did not serve in time.

    The message contains the tail of the member's log file.
    """


# --------------------------------------------------------------------------- installation


@dataclass(frozen=True)
class ZooKeeperInstallation:
    """Where the ``java`` binary and the ZooKeeper classpath were found."""

    java: str
    classpath: str

    @classmethod
    def find(cls, java: str | None = None, classpath: str | None = None) -> ZooKeeperInstallation:
        """Locate java and ZooKeeper; see :func:`find_zookeeper`."""
        return cls(java=_find_java(java), classpath=_find_classpath(classpath))


def find_zookeeper(java: str | None = None, classpath: str | None = None) -> ZooKeeperInstallation:
    """Locate the ``java`` binary and the ZooKeeper classpath.

    Explicit arguments win over the environment variables ``ZKLB_JAVA`` and
    ``ZKLB_ZOOKEEPER_CLASSPATH``, which win over the Debian defaults
    (``java`` on ``PATH`` and ``/usr/share/java/zookeeper.jar``).

    Raises:
        ZooKeeperNotInstalled: java or the jar is missing.
    """
    return ZooKeeperInstallation.find(java=java, classpath=classpath)


def zookeeper_available() -> bool:
    """Return True when java and ZooKeeper can be found (nothing is started)."""
    try:
        find_zookeeper()
    except ZooKeeperNotInstalled:
        return False
    return True


def _not_installed(what: str) -> ZooKeeperNotInstalled:
    return ZooKeeperNotInstalled(
        f"{what}. zklb.testing runs a real ZooKeeper server and needs Java and the ZooKeeper jars. "
        f"On Debian/Ubuntu install them with: {INSTALL_HINT} . "
        f"Elsewhere set {_ENV_JAVA} to a java binary and {_ENV_CLASSPATH} to a ZooKeeper classpath "
        "(e.g. '/opt/zookeeper/conf:/opt/zookeeper/lib/*')."
    )


def _find_java(explicit: str | None) -> str:
    requested = explicit or os.environ.get(_ENV_JAVA) or None
    if requested is not None:
        found = shutil.which(requested)
        if found is None:
            source = "the java argument" if explicit else _ENV_JAVA
            raise _not_installed(f"Java binary {requested!r} (from {source}) not found or not executable")
        return found
    found = shutil.which("java")
    if found is None:
        raise _not_installed("No 'java' found on PATH")
    return found


def _find_classpath(explicit: str | None) -> str:
    requested = explicit or os.environ.get(_ENV_CLASSPATH) or None
    if requested is None:
        if not _DEBIAN_JAR.is_file():
            raise _not_installed(f"ZooKeeper jar {_DEBIAN_JAR} not found")
        entries = [_DEBIAN_JAR]
        if all(jar.is_file() for jar in _DEBIAN_LOGGING_JARS):
            entries.extend(_DEBIAN_LOGGING_JARS)
        return os.pathsep.join(str(entry) for entry in entries)
    source = "the classpath argument" if explicit else _ENV_CLASSPATH
    entries_str = [entry for entry in requested.split(os.pathsep) if entry]
    if not entries_str:
        raise _not_installed(f"Empty ZooKeeper classpath (from {source})")
    for entry in entries_str:
        # "dir/*" is Java's jar wildcard; only its directory can be checked.
        path = Path(entry[:-1]) if entry.endswith("*") else Path(entry)
        if not path.exists():
            raise _not_installed(f"ZooKeeper classpath entry {entry!r} (from {source}) does not exist")
    return os.pathsep.join(entries_str)


# --------------------------------------------------------------------------- four letter words


def four_letter_word(port: int, command: str, *, host: str = "127.0.0.1", timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter-word command (``ruok``, ``srvr``, ``mntr``...) and return the answer.

    Raises:
        OSError: the server cannot be reached or did not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode("ascii"))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{command!r} to {host}:{port} timed out")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _server_mode(port: int, timeout: float) -> str | None:
    """The member's mode if it serves clients, else None."""
    try:
        if four_letter_word(port, "ruok", timeout=timeout).strip() != "imok":
            return None
        answer = four_letter_word(port, "srvr", timeout=timeout)
    except OSError:
        return None
    for line in answer.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Mode":
            mode = value.strip()
            return mode if mode in _SERVING_MODES else None
    # A member without quorum answers "not currently serving requests".
    return None


# --------------------------------------------------------------------------- members


# Ports of every live ensemble in this process.  A stopped member's ports are
# unbound, so without this another ensemble could pick them up and the
# member could not be restarted.
_claimed_ports: set[int] = set()
_claimed_ports_lock = threading.Lock()


def _reserve_ports(count: int) -> list[int]:
    """Free 127.0.0.1 ports, all distinct and not used by another ensemble here.

    The probe sockets stay bound until every port is picked so the kernel cannot
    hand out one port twice; the remaining race (another process grabbing a
    port before ZooKeeper binds it) is handled by retrying the start.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        with _claimed_ports_lock:
            for _ in range(10 * count):
                if len(ports) == count:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
                if port not in _claimed_ports:
                    ports.append(port)
            if len(ports) < count:
                raise ZooKeeperStartError(f"could not find {count} free ports on 127.0.0.1")
            _claimed_ports.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def _release_ports(ports: Iterable[int]) -> None:
    with _claimed_ports_lock:
        _claimed_ports.difference_update(ports)


@dataclass(frozen=True)
class _LaunchSpec:
    installation: ZooKeeperInstallation
    jvm_flags: tuple[str, ...]


class ZooKeeperMember:
    """One ZooKeeper server process of a :class:`ZooKeeperEnsemble`.

    Start and stop members through the ensemble (``ens.stop_member(i)``...);
    this object reports where the member listens and whether it runs.
    """

    def __init__(
        self,
        index: int,
        *,
        client_port: int,
        quorum_port: int,
        election_port: int,
        data_dir: Path,
        spec: _LaunchSpec,
    ) -> None:
        self._index = index
        self._client_port = client_port
        self._quorum_port = quorum_port
        self._election_port = election_port
        self._data_dir = data_dir
        self._spec = spec
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<ZooKeeperMember index={self._index} host={self.host} {state}>"

    @property
    def index(self) -> int:
        """Position in ``ensemble.members`` (0-based)."""
        return self._index

    @property
    def server_id(self) -> int:
        """ZooKeeper server id (``myid``), ``index + 1``."""
        return self._index + 1

    @property
    def client_port(self) -> int:
        """Port on 127.0.0.1 that clients connect to."""
        return self._client_port

    @property
    def quorum_port(self) -> int:
        """Port followers use to talk to the leader."""
        return self._quorum_port

    @property
    def election_port(self) -> int:
        """Port used for leader election."""
        return self._election_port

    @property
    def host(self) -> str:
        """``"127.0.0.1:<client_port>"``, usable as a kazoo hosts string."""
        return f"127.0.0.1:{self._client_port}"

    @property
    def data_dir(self) -> Path:
        """The member's data directory (also holds ``zoo.cfg`` and ``zookeeper.log``)."""
        return self._data_dir

    @property
    def config_path(self) -> Path:
        """The member's ``zoo.cfg``."""
        return self._data_dir / "zoo.cfg"

    @property
    def log_path(self) -> Path:
        """The file receiving the member's stdout, stderr and log output."""
        return self._data_dir / "zookeeper.log"

    @property
    def running(self) -> bool:
        """True while the member's process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process once it ended, else None."""
        return None if self._process is None else self._process.poll()

    def mode(self, timeout: float = 1.0) -> str | None:
        """``"leader"``, ``"follower"`` or ``"standalone"`` while serving clients, else None."""
        if not self.running:
            return None
        return _server_mode(self._client_port, timeout)

    def is_serving(self, timeout: float = 1.0) -> bool:
        """True when the member answers ``ruok`` and reports a serving mode."""
        return self.mode(timeout) is not None

    def log_tail(self, lines: int = _LOG_TAIL_LINES, *, since_start: bool = True) -> str:
        """Last ``lines`` lines of the log, by default only of the current/last process."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                # Bounded read: the tail of a long log never needs more than this.
                start = max(self._log_offset if since_start else 0, size - 64 * 1024)
                log.seek(start)
                text = log.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def _ports(self) -> tuple[int, int, int]:
        return (self._client_port, self._quorum_port, self._election_port)

    def _bind_failed(self) -> bool:
        return _BIND_ERROR.search(self.log_tail(400)) is not None

    def _describe_failure(self) -> str:
        code = self.returncode
        state = f"exited with status {code}" if code is not None else f"running, mode={self.mode()}"
        return (
            f"member {self._index} ({self.host}, {state}), last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _write_config(self, servers: Sequence[ZooKeeperMember], settings: Mapping[str, str]) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"dataDir={self._data_dir}", f"clientPort={self._client_port}"]
        lines += [f"{key}={value}" for key, value in settings.items()]
        if len(servers) > 1:
            lines += [
                f"server.{server.server_id}=127.0.0.1:{server.quorum_port}:{server.election_port}"
                for server in servers
            ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self._data_dir / "myid").write_text(f"{self.server_id}\n", encoding="ascii")
        (self._data_dir / "log4j.properties").write_text(_LOG4J_PROPERTIES, encoding="ascii")

    def _launch(self) -> None:
        if self.running:
            raise RuntimeError(f"ZooKeeper member {self._index} is already running (pid {self.pid})")
        installation = self._spec.installation
        command = [
            installation.java,
            *self._spec.jvm_flags,
            # Members are stopped with SIGKILL on close(); with perf data on,
            # each would leave a /tmp/hsperfdata_<user>/<pid> file behind.
            "-XX:-UsePerfData",
            "-cp",
            installation.classpath,
            f"-Dlog4j.configuration={(self._data_dir / 'log4j.properties').as_uri()}",
            # For a user-supplied classpath with its own logging config
            # (e.g. an upstream conf/ directory): log to the console, i.e. the file.
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            f"-Dzookeeper.log.dir={self._data_dir}",
            "-Dzookeeper.jmx.log4j.disable=true",
            # Also in zoo.cfg; as properties they hold even for ZooKeeper
            # versions that read them only from the system properties.
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.4lw.commands.whitelist=*",
            _MAIN_CLASS,
            str(self.config_path),
        ]
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== zklb.testing: starting member {self._index} at {stamp} =====\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                # Keeps Ctrl-C in the terminal from reaching the servers
                # before the test's own cleanup has a chance to stop them.
                start_new_session=True,
                close_fds=True,
            )

    def _signal_stop(self) -> None:
        if self.running and self._process is not None:
            self._process.terminate()

    def _kill(self) -> None:
        if self.running and self._process is not None:
            self._process.kill()

    def _reap(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for an ending process so no zombie stays behind."""
        if self._process is None or self._process.returncode is not None:
            return
        # Expiry only happens on a badly overloaded kernel; poll() in
        # ``running`` reaps the process later then.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=timeout)


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


class _Resources:
    """Everything that must be released; kept apart from the ensemble so a
    finalizer can release it without keeping the ensemble alive."""

    def __init__(self) -> None:
        self.members: list[ZooKeeperMember] = []
        self.root: Path | None = None

    def release(self) -> None:
        _kill_members(self.members)
        _release_ports(port for member in self.members for port in member._ports)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.members = []
        self.root = None


# --------------------------------------------------------------------------- ensemble


class ZooKeeperEnsemble:
    """A real ZooKeeper server (``size=1``) or ensemble on 127.0.0.1.

    Args:
        size: number of members; 1 runs a standalone server.
        java: path or name of the java binary (default: ``ZKLB_JAVA``, then ``java`` on PATH).
        classpath: ZooKeeper classpath (default: ``ZKLB_ZOOKEEPER_CLASSPATH``, then the Debian jars).
        tick_time_ms: ZooKeeper ``tickTime``; failure detection between members scales with it.
        min_session_timeout_ms / max_session_timeout_ms: session timeouts clients may negotiate.
        jvm_flags: JVM options replacing :data:`DEFAULT_JVM_FLAGS`.
        extra_config: additional or overriding ``zoo.cfg`` settings.
        base_dir: parent directory for the temporary directories (default: the system temp dir).
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.

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
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._size = size
        self._spec = _LaunchSpec(
            installation=find_zookeeper(java=java, classpath=classpath),
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
        ports = iter(_reserve_ports(3 * self._size))
        members = [
            ZooKeeperMember(
                index=index,
                client_port=next(ports),
                quorum_port=next(ports),
                election_port=next(ports),
                data_dir=root / f"member-{index + 1}",
                spec=self._spec,
            )
            for index in range(self._size)
        ]
        self._resources.members = members
        for member in members:
            member._write_config(members, self._settings)

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


# --------------------------------------------------------------------------- helpers for tests


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str = "condition", *, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; raise `TimeoutError` naming ``what`` after ``timeout`` s.

    For tests that wait on a condition: a deadline instead of a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def expire_session(client: KazooClient, hosts: str, timeout: float = 30.0) -> None:
    """Make ZooKeeper expire ``client``'s session, as a real expiry would.

    A second connection joins the same session (id and password) and closes it, so the server ends the
    session and deletes its ephemeral znodes; ``client`` then sees LOST and, if it keeps running,
    reconnects with a new session.
    """
    session_id, password = client.client_id
    other = KazooClient(hosts=hosts, client_id=(session_id, password))
    other.start(timeout=timeout)
    other.stop()
    other.close()
