"""What zklb exports as metrics, read from a balancer's public statistics at collection time.

Shared by `zklb.prometheus` and `zklb.otel` so that both export the same series with the same meaning.
Nothing here runs on the request path: a collection calls ``stats()`` and ``pool_stats()`` once per
balancer, which copy the counters the balancer keeps anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from zklb.balancer import LoadBalancer
from zklb.errors import ZklbError

__all__ = ["SERIES", "Balancers", "Sample", "Series", "read"]

#: Labels (Prometheus) / attributes (OpenTelemetry) of one sample.
Labels = dict[str, str]
Sample = tuple[Labels, float]


@dataclass(frozen=True, slots=True)
class Series:
    """One exported metric: ``name`` is the Prometheus base name (``_total`` is added to counters)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    unit: str = ""  # OpenTelemetry unit (UCUM): "s", "{request}", ...
    per_instance: bool = False
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "labels", ("service", "instance", "url") if self.per_instance else ("service",)
        )

    @property
    def otel_name(self) -> str:
        """The OpenTelemetry instrument name: dotted, as its conventions want."""
        return self.name.replace("zklb_", "zklb.", 1).removesuffix("_seconds")


SERIES = (
    Series(
        "zklb_instances", "gauge", "Instances in the pool, draining and ejected ones included.", "{instance}"
    ),
    Series(
        "zklb_healthy_instances",
        "gauge",
        "Instances picks may choose (not draining, not ejected).",
        "{instance}",
    ),
    Series("zklb_draining_instances", "gauge", "Instances marked out of service in ZooKeeper.", "{instance}"),
    Series("zklb_panic", "gauge", "1 while the pool is in panic (ejected instances are picked again)."),
    Series("zklb_membership_version", "gauge", "Version of the membership picks use."),
    Series("zklb_connected", "gauge", "1 while the balancer's ZooKeeper session is connected, else 0."),
    Series(
        "zklb_requests",
        "counter",
        "Requests finished on the instance, failed ones included.",
        "{request}",
        per_instance=True,
    ),
    Series(
        "zklb_request_failures",
        "counter",
        "Requests that failed on the instance.",
        "{request}",
        per_instance=True,
    ),
    Series("zklb_in_flight", "gauge", "Requests in flight on the instance.", "{request}", per_instance=True),
    Series("zklb_ejected", "gauge", "1 while passive health ejects the instance, else 0.", per_instance=True),
    Series("zklb_ejections", "counter", "Ejections of the instance since it joined.", per_instance=True),
    Series(
        "zklb_latency_ewma_seconds", "gauge", "Moving average of request latency.", "s", per_instance=True
    ),
)


def read(balancers: Iterable[LoadBalancer]) -> dict[str, list[Sample]]:
    """The samples of every series for ``balancers`` now; one not started yet, or closed, gives none."""
    samples: dict[str, list[Sample]] = {s.name: [] for s in SERIES}
    for lb in balancers:
        if not lb.started:
            continue
        try:
            pool = lb.pool_stats()
            stats = lb.stats()
        except ZklbError:  # closed meanwhile: nothing left to report
            continue
        members = lb.membership.by_id
        service = {"service": lb.service}
        samples["zklb_instances"].append((service, pool.size))
        samples["zklb_healthy_instances"].append((service, pool.healthy))
        samples["zklb_draining_instances"].append((service, pool.draining))
        samples["zklb_panic"].append((service, float(pool.panic)))
        samples["zklb_membership_version"].append((service, pool.version))
        if pool.connection != "static":  # no ZooKeeper to be connected to
            samples["zklb_connected"].append((service, float(pool.connection == "connected")))
        for key, st in stats.items():
            member = members.get(key)
            labels = {"service": lb.service, "instance": key, "url": member.url if member else ""}
            samples["zklb_requests"].append((labels, st.requests))
            samples["zklb_request_failures"].append((labels, st.failures))
            samples["zklb_in_flight"].append((labels, st.in_flight))
            samples["zklb_ejected"].append((labels, float(st.ejected)))
            samples["zklb_ejections"].append((labels, st.times_ejected))
            if st.latency_ewma is not None:
                samples["zklb_latency_ewma_seconds"].append((labels, st.latency_ewma))
    return samples


class Balancers:
    """The balancers an exporter reports on; `add` and `remove` may run while a collection reads them."""

    def __init__(self, balancers: Iterable[LoadBalancer]) -> None:
        self._lock = threading.Lock()
        self._balancers = tuple(balancers)

    def add(self, balancer: LoadBalancer) -> None:
        """Report on ``balancer`` too from the next collection on."""
        with self._lock:
            self._balancers = (*self._balancers, balancer)

    def remove(self, balancer: LoadBalancer) -> None:
        """Stop reporting on ``balancer``; unknown balancers are ignored."""
        with self._lock:
            self._balancers = tuple(b for b in self._balancers if b is not balancer)

    def clear(self) -> None:
        """Report on none."""
        with self._lock:
            self._balancers = ()

    def read(self) -> dict[str, list[Sample]]:
        """`read` of the current balancers (a tuple swapped whole, so no lock is held while reading)."""
        return read(self._balancers)
