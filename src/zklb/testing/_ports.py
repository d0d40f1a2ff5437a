"""Free ports on 127.0.0.1 for ZooKeeper members, claimed for as long as their ensemble lives."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

from zklb.testing.errors import ZooKeeperStartError

# Ports of every live ensemble in this process.  A stopped member's ports are
# unbound, so without this another ensemble could pick them up and the
# member could not be restarted.
_claimed_ports: set[int] = set()
_claimed_ports_lock = threading.Lock()


def reserve_ports(count: int) -> list[int]:
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


def release_ports(ports: Iterable[int]) -> None:
    with _claimed_ports_lock:
        _claimed_ports.difference_update(ports)
