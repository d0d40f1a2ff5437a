"""Benchmark scenario: transport overhead, each HTTP client with zklb against the same client without
it (``bench_http.py`` has the server, the clients and how the rounds are paired), against a local
server, keep-alive on."""

from __future__ import annotations

import os
import statistics

from bench_http import CONTROL, PAIRS, backend, best_cpu_overhead, cpu_overhead, measure, overhead
from report_model import Report

from zklb import LoadBalancer


def transport_overhead(report: Report, hosts: str, count: int, rounds: int) -> None:
    with backend() as port, LoadBalancer(hosts, f"http-{os.getpid()}") as lb:
        lb.add_server(f"http://127.0.0.1:{port}")
        lb.wait_for(lambda membership: len(membership.by_id) == 1, 30)
        results = measure(port, lb, count, rounds)
    scenario = f"transport, {count} GETs x {rounds} paired rounds"
    for plain, balanced in PAIRS:
        wall = overhead(results.rate[plain], results.rate[balanced])
        with_zklb, without = (statistics.median(results.rate[name]) for name in (balanced, plain))
        report.add(
            scenario,
            f"{balanced}: req/s (median) / {plain} without zklb; extra time per request, median [IQR]",
            f"{with_zklb:,.0f} / {without:,.0f}; {wall}",
            "<= 5 %",
            wall.median <= 0.05,
        )
        cpu = cpu_overhead(results.cpu[plain], results.cpu[balanced])
        best = best_cpu_overhead(results.cpu[plain], results.cpu[balanced])
        report.add(
            scenario,
            f"{balanced}: extra client CPU per request, median [IQR]; fastest round / fastest round",
            f"{cpu}; {best:+.1%}",
        )
    # Two plain httpx clients measured the same way: the run's noise floor for the figures above.
    control, twin = CONTROL
    noise = (
        overhead(results.rate[control], results.rate[twin]),
        cpu_overhead(results.cpu[control], results.cpu[twin]),
    )
    report.add(
        scenario, "control, plain httpx / plain httpx: wall; CPU (the noise floor)", f"{noise[0]}; {noise[1]}"
    )
