"""A gunicorn config module: register the server once per arbiter, drain on SIGTERM, deregister on exit.

Use it as the config::

    ZKLB_SERVICE=api gunicorn -c python:zklb.gunicorn -w 4 -b 10.0.0.2:8080 app:app

or import the hooks into a config of your own (and call them from yours if you have them)::

    from zklb.gunicorn import on_exit, when_ready

The registration is made in the master (``when_ready`` runs there once, before any worker is forked),
so four workers behind one address are one instance with one share of the traffic, not four. Settings
come from the environment:

- ``ZKLB_SERVICE`` (required): the service name;
- ``ZKLB_URL``: the URL clients use, default the first address the arbiter listens on
  (``http://host:port``, ``https`` with TLS); set it when binding a wildcard address;
- ``ZKLB_DRAIN``: seconds between taking the instance out of rotation and deleting it, default 2;
- ``ZKLB_HOSTS`` (default ``127.0.0.1:2181``) and ``ZKLB_ROOT`` (default ``/services``).

On SIGTERM the master's own handling is wrapped: first drain (every client stops picking the instance
while the workers keep serving), wait ``ZKLB_DRAIN`` seconds, delete the znode, then let gunicorn stop its
workers gracefully as usual. Any other exit (SIGINT, SIGQUIT, a crash of the arbiter) deletes it in
``on_exit``, and the session ending removes it whatever happens.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zklb._zk import check_timeout
from zklb.errors import ConfigurationError
from zklb.registry import Registry

__all__ = ["on_exit", "when_ready"]

log = logging.getLogger("zklb.gunicorn")

DEFAULT_DRAIN = 2.0


class _Logger(Protocol):
    def info(self, msg: str, *args: object) -> None: ...


class _Config(Protocol):
    @property
    def is_ssl(self) -> bool: ...


class Arbiter(Protocol):
    """What these hooks use of gunicorn's ``Arbiter`` (typed here so zklb does not import gunicorn)."""

    LISTENERS: Sequence[Any]
    cfg: _Config
    log: _Logger
    handle_term: Callable[[], None]


_registries: dict[int, Registry] = {}  # id(arbiter) -> its registry: one arbiter, one registration


def when_ready(server: Arbiter) -> None:
    """gunicorn hook, in the master once it listens: register, and drain on SIGTERM before workers stop.

    Raises `ConfigurationError` (gunicorn does not start) without ``ZKLB_SERVICE`` or a usable URL, and
    `RegistryError` when ZooKeeper does not confirm the registration in time.
    """
    if id(server) in _registries:
        return  # called again for the same arbiter: it is registered already
    service = os.environ.get("ZKLB_SERVICE", "").strip()
    if not service:
        raise ConfigurationError("zklb.gunicorn needs ZKLB_SERVICE, the service name to register under")
    url = os.environ.get("ZKLB_URL", "").strip() or _bound_url(server)
    drain = _drain_seconds()
    registry = Registry()  # hosts and root from ZKLB_HOSTS and ZKLB_ROOT, as everywhere (zklb._config)
    try:
        registration = registry.register(service, url)
    except BaseException:
        registry.close()
        raise
    _registries[id(server)] = registry
    server.log.info("zklb: registered %s as %s (drain %gs on SIGTERM)", url, registration.path, drain)
    handle_term = server.handle_term

    def drain_then_term() -> None:
        # On the master's main loop, which gunicorn runs outside its signal handler: blocking here for
        # the drain keeps the workers serving while clients move away, then gunicorn stops them.
        end = time.monotonic() + drain
        if drain > 0:
            server.log.info("zklb: draining %s for %gs", registration.path, drain)
            registry.drain(timeout=drain)
            time.sleep(max(0.0, end - time.monotonic()))
        registry.close()
        server.log.info("zklb: deregistered %s", registration.path)
        handle_term()

    server.handle_term = drain_then_term


def on_exit(server: Arbiter) -> None:
    """gunicorn hook, in the master as it exits: deregister (a no-op after a SIGTERM drain did)."""
    registry = _registries.pop(id(server), None)
    if registry is not None:
        registry.close()


def _drain_seconds() -> float:
    raw = os.environ.get("ZKLB_DRAIN", "").strip()
    if not raw:
        return DEFAULT_DRAIN
    try:
        return check_timeout("ZKLB_DRAIN", float(raw), zero=True)
    except ValueError as exc:
        raise ConfigurationError(f"ZKLB_DRAIN must be a number of seconds >= 0, got {raw!r}") from exc


def _bound_url(server: Arbiter) -> str:
    """``scheme://host:port`` of the arbiter's first listener."""
    if not server.LISTENERS:
        raise ConfigurationError("gunicorn listens on nothing: set ZKLB_URL")
    address = server.LISTENERS[0].getsockname()
    if not isinstance(address, tuple):
        raise ConfigurationError(f"gunicorn listens on a unix socket ({address}): set ZKLB_URL")
    host, port = address[0], address[1]
    if host in ("0.0.0.0", "::"):
        # A wildcard says nothing to a client: name this machine instead (ZKLB_URL overrides it).
        host = socket.getfqdn()
    scheme = "https" if server.cfg.is_ssl else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
