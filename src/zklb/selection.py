"""`Selection`: which instances a balancer picks from (``filter=``) and which it prefers (``prefer=``).

Pure: the balancer applies it to each membership snapshot when it builds pickers, never per pick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from zklb.errors import ConfigurationError
from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["InstanceFilter", "Selection"]

log = logging.getLogger("zklb.balancer")

#: ``filter=``: True for the instances the balancer may pick.
InstanceFilter = Callable[[ServiceInstance], bool]


class Selection:
    """``filter`` keeps only the instances it is true for; ``prefer`` (metadata that must match, e.g.
    ``{"zone": "a"}``) names the instances picked from while one of them is healthy and not draining.

    A filter that raises excludes that instance (and logs it): it runs on the watcher's thread, where
    nothing may escape.
    """

    __slots__ = ("filter", "prefer")

    def __init__(self, filter: InstanceFilter | None, prefer: Mapping[str, str] | None) -> None:
        if filter is not None and not callable(filter):
            raise ConfigurationError(f"filter must be a callable taking a ServiceInstance, got {filter!r}")
        if prefer is not None:
            if not isinstance(prefer, Mapping) or not prefer:
                raise ConfigurationError(f"prefer must be a non-empty mapping of metadata, got {prefer!r}")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in prefer.items()):
                raise ConfigurationError(f"prefer's keys and values must be strings, got {prefer!r}")
            prefer = dict(prefer)
        self.filter = filter
        self.prefer = prefer

    def kept(self, membership: Membership) -> Membership:
        """``membership`` with only the instances the filter keeps (the same snapshot without a filter)."""
        keep = self.filter
        if keep is None:
            return membership
        kept = []
        for inst in membership.instances:
            try:
                if keep(inst):
                    kept.append(inst)
            except Exception:  # a user's callable on the watcher's thread: log, never raise
                log.exception(
                    "%s: filter raised for instance %s; leaving it out", membership.service, inst.id
                )
        if len(kept) == len(membership):
            return membership
        return Membership(membership.service, membership.version, tuple(kept))

    def preferred(self, membership: Membership) -> Membership | None:
        """The instances whose metadata match ``prefer``, or None if that is none or all of them."""
        prefer = self.prefer
        if prefer is None:
            return None
        matching = tuple(
            inst for inst in membership.instances if all(inst.metadata.get(k) == v for k, v in prefer.items())
        )
        if not matching or len(matching) == len(membership):
            return None
        return Membership(membership.service, membership.version, matching)
