"""Finding the ``java`` binary and the ZooKeeper jars that `zklb.testing` starts servers from."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from zklb.testing.errors import ZooKeeperNotInstalled

__all__ = ["DEBIAN_JAR", "INSTALL_HINT", "ZooKeeperInstallation", "find_zookeeper", "zookeeper_available"]

INSTALL_HINT = "apt-get install -y zookeeper default-jre-headless"
"""The command that installs what this module needs on Debian/Ubuntu."""

#: The jar of Debian's ``zookeeper`` package, the default classpath.
DEBIAN_JAR = Path("/usr/share/java/zookeeper.jar")
# The Debian jar's manifest pulls in slf4j-api but no slf4j binding, so
# without these two jars ZooKeeper silently logs nothing at all.
_DEBIAN_LOGGING_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
_ENV_CLASSPATH = "ZKLB_ZOOKEEPER_CLASSPATH"
_ENV_JAVA = "ZKLB_JAVA"


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
        if not DEBIAN_JAR.is_file():
            raise _not_installed(f"ZooKeeper jar {DEBIAN_JAR} not found")
        entries = [DEBIAN_JAR]
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
