"""Defaults from the environment: ``ZKLB_HOSTS`` and ``ZKLB_ROOT``.

One place decides what an omitted hosts string or root means, so the library and the ``zklb`` command
agree. Explicit arguments always win; the environment is read when a component is built, so a process
that sets it before building one needs no restart.
"""

from __future__ import annotations

import logging
import os

__all__ = [
    "FALLBACK_HOSTS",
    "FALLBACK_ROOT",
    "HOSTS_VARIABLE",
    "ROOT_VARIABLE",
    "default_hosts",
    "default_root",
]

log = logging.getLogger("zklb")

HOSTS_VARIABLE = "ZKLB_HOSTS"
ROOT_VARIABLE = "ZKLB_ROOT"
#: What an omitted hosts string means when ``ZKLB_HOSTS`` is unset or empty.
FALLBACK_HOSTS = "127.0.0.1:2181"
#: What an omitted root means when ``ZKLB_ROOT`` is unset or empty (Curator's and Spring's default).
FALLBACK_ROOT = "/services"

_fallback_logged = False


def default_hosts() -> str:
    """``ZKLB_HOSTS`` if set, else ``127.0.0.1:2181`` (said once per process at INFO: it is rarely meant)."""
    global _fallback_logged  # noqa: PLW0603 - one flag for the whole process, by design
    hosts = os.environ.get(HOSTS_VARIABLE, "").strip()
    if hosts:
        return hosts
    if not _fallback_logged:
        _fallback_logged = True
        log.info("no ZooKeeper hosts given and %s is not set: using %s", HOSTS_VARIABLE, FALLBACK_HOSTS)
    return FALLBACK_HOSTS


def default_root() -> str:
    """``ZKLB_ROOT`` if set, else ``/services``."""
    return os.environ.get(ROOT_VARIABLE, "").strip() or FALLBACK_ROOT
