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

For the HTTP side of a failover test, `HTTPBackend` is a threaded HTTP/1.1 server on 127.0.0.1 with
routes of the test's own (an `HTTPBackendHandler` subclass) that can be killed hard (connects refused,
open connections cut, every thread joined) and started again at the same port.

One concept per module: ``install`` (finding java and the jars), ``member`` (one server process, the
four-letter words), ``ensemble``, ``helpers`` (``wait_until``, ``expire_session``), ``backend``
(``HTTPBackend``) and ``errors``; everything public is imported from ``zklb.testing``.
"""

from __future__ import annotations

from zklb.testing.backend import HTTPBackend, HTTPBackendHandler
from zklb.testing.ensemble import ZooKeeperEnsemble
from zklb.testing.errors import ZooKeeperNotInstalled, ZooKeeperStartError
from zklb.testing.helpers import expire_session, wait_until
from zklb.testing.install import INSTALL_HINT, ZooKeeperInstallation, find_zookeeper, zookeeper_available
from zklb.testing.member import DEFAULT_JVM_FLAGS, ZooKeeperMember, four_letter_word

__all__ = [
    "DEFAULT_JVM_FLAGS",
    "INSTALL_HINT",
    "HTTPBackend",
    "HTTPBackendHandler",
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
