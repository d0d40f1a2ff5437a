"""Prometheus and OpenTelemetry exporters, read from a balancer that carried real HTTP traffic."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from kazoo.client import KazooClient
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from zklb import HealthPolicy, LoadBalancer
from zklb.httpx import LoadBalancedTransport
from zklb.otel import instrument
from zklb.prometheus import ZklbCollector
from zklb.testing import HTTPBackend, HTTPBackendHandler

REQUESTS = 20


class _Ok(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def lb(zk: KazooClient, service: str) -> Iterator[LoadBalancer]:
    """A balancer over one live backend and one killed one, after REQUESTS real GETs through httpx."""
    health = HealthPolicy(consecutive_failures=2, base_ejection_time=60, max_ejection_time=60)
    with HTTPBackend(_Ok) as up, LoadBalancer(zk, service, health=health) as balancer:
        dead = HTTPBackend(_Ok).start()
        dead.kill()  # a port that refuses connections: every attempt on it fails, then is retried on `up`
        balancer.add_server(up.url, id="up")
        balancer.add_server(dead.url, id="dead")
        with httpx.Client(transport=LoadBalancedTransport(balancer)) as client:
            for _ in range(REQUESTS):
                assert client.get(f"http://{service}/").status_code == 200
        yield balancer


def _expected(lb: LoadBalancer) -> dict[tuple[str, str], float]:
    """What every exporter must say, from the balancer's own public statistics."""
    stats, pool = lb.stats(), lb.pool_stats()
    expected = {
        ("instances", ""): pool.size,
        ("healthy_instances", ""): pool.healthy,
        ("membership_version", ""): pool.version,
        ("connected", ""): 1.0,
        ("panic", ""): 0.0,
    }
    for key, st in stats.items():
        expected |= {
            ("requests", key): st.requests,
            ("request_failures", key): st.failures,
            ("in_flight", key): st.in_flight,
            ("ejected", key): float(st.ejected),
            ("ejections", key): st.times_ejected,
        }
    return expected


def test_the_traffic_is_what_the_exporters_will_show(lb: LoadBalancer) -> None:
    stats = lb.stats()
    assert stats["up"].requests == REQUESTS and stats["up"].failures == 0
    assert stats["dead"].failures == 2 and stats["dead"].ejected and stats["dead"].times_ejected == 1


def _scrape(registry: CollectorRegistry, service: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels["service"] == service
            name = sample.name.removeprefix("zklb_").removesuffix("_total")
            found[(name, sample.labels.get("instance", ""))] = sample.value
    return found


def test_prometheus_scrape_of_a_real_registry(lb: LoadBalancer, service: str) -> None:
    registry = CollectorRegistry()
    registry.register(ZklbCollector(lb))
    text = generate_latest(registry).decode()
    assert "# TYPE zklb_requests_total counter" in text
    assert "# TYPE zklb_in_flight gauge" in text
    assert f'zklb_requests_total{{instance="up",service="{service}",url=' in text
    scraped = _scrape(registry, service)
    assert {k: v for k, v in scraped.items() if k in _expected(lb)} == _expected(lb)
    assert scraped[("latency_ewma_seconds", "up")] > 0
    assert scraped[("requests", "up")] == REQUESTS and scraped[("ejected", "dead")] == 1

    lb.close()  # a closed balancer exports nothing, and the scrape still works
    assert _scrape(registry, service) == {}


def test_prometheus_collector_add_and_remove(lb: LoadBalancer, service: str) -> None:
    collector = ZklbCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert _scrape(registry, service) == {}
    collector.add(lb)
    assert _scrape(registry, service)[("requests", "up")] == REQUESTS
    collector.remove(lb)
    assert _scrape(registry, service) == {}


def _otel(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = point.attributes or {}
                    name = metric.name.removeprefix("zklb.")
                    found[(name, str(attrs.get("instance", "")))] = point.value  # type: ignore[union-attr]
    return found


def test_opentelemetry_in_memory_reader(lb: LoadBalancer) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        handle = instrument(lb, meter_provider=provider)
        observed = _otel(reader)
        assert {k: v for k, v in observed.items() if k in _expected(lb)} == _expected(lb)
        assert observed[("latency_ewma", "up")] > 0
        handle.close()
        assert _otel(reader) == {}
    finally:
        provider.shutdown()
