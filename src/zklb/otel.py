"""OpenTelemetry metrics for zklb balancers: observable instruments read at collection time.

::

    from zklb.otel import instrument

    handle = instrument(lb_api, lb_orders)              # the global MeterProvider, or meter_provider=...
    ...
    handle.close()                                       # report on none of them any more

The instruments mean what the Prometheus series of `zklb.prometheus` mean, with OpenTelemetry names
(``zklb.requests``, ``zklb.request_failures``, ``zklb.in_flight``, ``zklb.instances``, ``zklb.ejected``,
``zklb.membership_version``, ``zklb.ejections``, ``zklb.latency_ewma`` in seconds, ...) and the
attributes ``service`` (and ``instance``, ``url`` per instance). Nothing is recorded on the request
path: each collection calls ``stats()`` and ``pool_stats()``.
"""

from __future__ import annotations

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:
    raise ImportError(
        "zklb.otel needs opentelemetry-api, which is not installed: pip install zklb[otel]",
        name="opentelemetry",
    ) from exc

from collections.abc import Callable, Iterable

from zklb import __version__
from zklb._metrics import SERIES, Balancers, Series
from zklb.balancer import LoadBalancer

__all__ = ["Instrumentation", "instrument"]

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instrumentation:
    """The balancers some OpenTelemetry instruments report on (what `instrument` returns).

    OpenTelemetry cannot unregister an instrument; `close` makes them report nothing from then on.
    """

    def __init__(self, balancers: Iterable[LoadBalancer]) -> None:
        self._balancers = Balancers(balancers)

    def add(self, balancer: LoadBalancer) -> None:
        """Report on ``balancer`` too from the next collection on."""
        self._balancers.add(balancer)

    def remove(self, balancer: LoadBalancer) -> None:
        """Stop reporting on ``balancer``; unknown balancers are ignored."""
        self._balancers.remove(balancer)

    def close(self) -> None:
        """Report on no balancer any more. Idempotent."""
        self._balancers.clear()

    def callback(self, series: Series) -> _Callback:
        """The observable instrument's callback for ``series``."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for labels, value in self._balancers.read()[series.name]]

        return observe


def instrument(*balancers: LoadBalancer, meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Create zklb's observable instruments on ``meter_provider`` (default: the global one).

    Call it once per meter provider; `Instrumentation.add` reports on more balancers later.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("zklb", __version__)
    handle = Instrumentation(balancers)
    for series in SERIES:
        callbacks = [handle.callback(series)]
        if series.kind == "counter":
            meter.create_observable_counter(
                series.otel_name, callbacks, unit=series.unit, description=series.help
            )
        elif series.name == "zklb_in_flight":  # goes up and down, and adds up across instances
            meter.create_observable_up_down_counter(
                series.otel_name, callbacks, unit=series.unit, description=series.help
            )
        else:
            meter.create_observable_gauge(
                series.otel_name, callbacks, unit=series.unit, description=series.help
            )
    return handle
