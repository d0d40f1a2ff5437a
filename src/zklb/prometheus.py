"""Prometheus metrics for zklb balancers: a custom collector read at scrape time.

::

    from prometheus_client import REGISTRY, start_http_server
    from zklb.prometheus import ZklbCollector

    REGISTRY.register(ZklbCollector(lb_api, lb_orders))
    start_http_server(9100)

Nothing is counted on the request path for this: each scrape calls ``stats()`` and ``pool_stats()`` on
every balancer and turns them into samples. Series (see ``docs/metrics.md``): per service
``zklb_instances``, ``zklb_healthy_instances``, ``zklb_draining_instances``, ``zklb_panic``,
``zklb_membership_version``, ``zklb_connected``; per instance (labels ``service``, ``instance``, ``url``)
``zklb_requests_total``, ``zklb_request_failures_total``, ``zklb_in_flight``, ``zklb_ejected``,
``zklb_ejections_total``, ``zklb_latency_ewma_seconds``.
"""

from __future__ import annotations

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "zklb.prometheus needs prometheus-client, which is not installed: pip install zklb[prometheus]",
        name="prometheus_client",
    ) from exc

from collections.abc import Iterator

from zklb._metrics import SERIES, Balancers, Sample, Series
from zklb.balancer import LoadBalancer

__all__ = ["ZklbCollector"]


def _family(series: Series, samples: list[Sample] | None) -> Metric:
    family: CounterMetricFamily | GaugeMetricFamily
    if series.kind == "counter":
        family = CounterMetricFamily(series.name, series.help, labels=series.labels)
    else:
        family = GaugeMetricFamily(series.name, series.help, labels=series.labels)
    for labels, value in samples or ():
        family.add_metric([labels[name] for name in series.labels], value)
    return family


class ZklbCollector(Collector):
    """Exports the statistics of ``balancers`` (more with `add`) on every scrape.

    Register it once with a ``prometheus_client`` registry. A closed balancer exports nothing; remove it
    with `remove`. Each balancer's service name labels its series, so give one service one balancer per
    registry (two balancers of one service would export clashing series).
    """

    def __init__(self, *balancers: LoadBalancer) -> None:
        self._balancers = Balancers(balancers)

    def add(self, balancer: LoadBalancer) -> None:
        """Export ``balancer`` too from the next scrape on."""
        self._balancers.add(balancer)

    def remove(self, balancer: LoadBalancer) -> None:
        """Stop exporting ``balancer``; unknown balancers are ignored."""
        self._balancers.remove(balancer)

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so that registering checks names without a scrape."""
        for series in SERIES:
            yield _family(series, None)

    def collect(self) -> Iterator[Metric]:
        """One family per series, with a sample per balancer (per service) or per instance."""
        samples = self._balancers.read()
        for series in SERIES:
            yield _family(series, samples[series.name])
