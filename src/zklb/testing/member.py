"""One ZooKeeper server process, and the four-letter words that ask a server how it is."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zklb.testing import _cleanup
from zklb.testing.install import ZooKeeperInstallation

__all__ = ["DEFAULT_JVM_FLAGS", "ZooKeeperMember", "four_letter_word"]

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

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%c{1}] - %m%n
"""

_SERVING_MODES = frozenset({"leader", "follower", "observer", "standalone"})
_BIND_ERROR = re.compile(r"BindException|Address already in use")
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- four letter words


def four_letter_word(
    port: int,
    command: str,
    *,
    host: str = "127.0.0.1",
    timeout: float = 1.0,
    tls: ssl.SSLContext | None = None,
) -> str:
    """Send a ZooKeeper four-letter-word command (``ruok``, ``srvr``, ``mntr``...) and return the answer.

    ``tls`` is the context for a TLS-only server (`ZooKeeperEnsemble.tls_context`).

    Raises:
        OSError: the server cannot be reached or did not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        if tls is not None:
            sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
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


def _server_mode(port: int, timeout: float, tls: ssl.SSLContext | None) -> str | None:
    """The member's mode if it serves clients, else None."""
    try:
        if four_letter_word(port, "ruok", timeout=timeout, tls=tls).strip() != "imok":
            return None
        answer = four_letter_word(port, "srvr", timeout=timeout, tls=tls)
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
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._index = index
        self._client_port = client_port
        self._quorum_port = quorum_port
        self._election_port = election_port
        self._data_dir = data_dir
        self._spec = spec
        self._tls = tls  # set: the client port speaks TLS only, and this context talks to it
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
        """Port on 127.0.0.1 that clients connect to (ZooKeeper's ``secureClientPort`` with TLS)."""
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
        return _server_mode(self._client_port, timeout, self._tls)

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
        lines = [f"dataDir={self._data_dir}"]
        if self._tls is None:
            lines.append(f"clientPort={self._client_port}")
            lines += [f"{key}={value}" for key, value in settings.items()]
        else:  # TLS only: no plain port at all (ZooKeeper refuses a plain port's address without it)
            lines.append(f"secureClientPort={self._client_port}")
            lines += [
                f"{key.replace('clientPortAddress', 'secureClientPortAddress')}={value}"
                for key, value in settings.items()
            ]
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
            # Started so that it dies with this process, even a SIGKILLed one (see _cleanup).
            self._process = _cleanup.popen(
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
