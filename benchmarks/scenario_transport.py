"""Benchmark scenario: transport overhead, each HTTP client with zklb against the same client without
it (``bench_http.py`` has the server and the clients), against a local server, keep-alive on."""

from __future__ import annotations

import os
import statistics

from bench_http import PAIRS, backend, measure, overhead
from report_model import Report

from zklb import LoadBalancer


def transport_overhead(report: Report, hosts: str, count: int, rounds: int) -> None:
    with backend() as port, LoadBalancer(hosts, f"http-{os.getpid()}") as lb:
        lb.add_server(f"http://127.0.0.1:{port}")
        lb.wait_for(lambda membership: len(membership.by_id) == 1, 30)
        results = measure(port, lb, count, rounds)
    for plain, balanced in PAIRS:
        extra = overhead(results[plain], results[balanced])
        report.add(
            f"transport, {count} GETs x {rounds} rounds",
            f"{balanced}: req/s (median) / {plain} without zklb; overhead per request",
            f"{statistics.median(results[balanced]):,.0f} / {statistics.median(results[plain]):,.0f};"
            f" {extra:+.1%}",
            "<= 5 %",
            extra <= 0.05,
        )
