"""Helpers shared by the tests of the strategies added with issue 9."""

from __future__ import annotations

from collections.abc import Mapping

from zklb.instance import ServiceInstance
from zklb.membership import Membership


def membership(weights: Mapping[str, int], version: int = 1, **metadata: dict[str, str]) -> Membership:
    """A snapshot of instances named by ``weights``' keys, with those weights (and optional metadata)."""
    return Membership(
        service="svc",
        version=version,
        instances=tuple(
            ServiceInstance(id=i, host="127.0.0.1", port=8000 + k, weight=w, metadata=metadata.get(i, {}))
            for k, (i, w) in enumerate(weights.items())
        ),
    )


def uniform(n: int, version: int = 1) -> Membership:
    """``n`` instances of weight 1 named ``i0``, ``i1``, ..."""
    return membership({f"i{k}": 1 for k in range(n)}, version)
