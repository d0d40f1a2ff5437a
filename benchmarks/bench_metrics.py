"""Cost of the metrics exporters to the hot path: picks with a Prometheus collector registered vs none.

The collector reads ``stats()``/``pool_stats()`` at scrape time only, so registering it should cost the
hot path nothing; scraping takes the balancer's lock briefly, so a scrape running during picks may cost
a little. Three runs of the same balancer, each a ratio to the run without a collector (same process,
same pool of 10 instances), for ``get_server()`` and ``acquire()``:

- ``registered``: a ``ZklbCollector`` on a registry, not scraped;
- ``scraped``: the same, scraped by a thread without pause (``generate_latest``), far more often than
  any Prometheus server would (they scrape every 10-60 s).

Run::

    python benchmarks/bench_metrics.py            # add --quick for a faster, noisier run
"""

from __future__ import annotations

import threading

from bench_pick import acquire_release
from prometheus_client import CollectorRegistry, generate_latest
from timing import best_ns_per_call, calls_and_repeats

from zklb import LoadBalancer, ServiceInstance
from zklb.prometheus import ZklbCollector


def balancer() -> LoadBalancer:
    servers = [
        ServiceInstance(id=f"i{k}", host="127.0.0.1", port=8000 + k, weight=1 + k % 3) for k in range(10)
    ]
    return LoadBalancer.static(servers, strategy="least_connections")


class Scraper:
    """A thread scraping a registry in a loop until stopped; counts its scrapes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            generate_latest(self.registry)
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(calls: int, repeats: int) -> tuple[dict[str, dict[str, float]], int]:
    """ns per call of each hot-path call per setting, and the scrapes done during the ``scraped`` runs.

    The settings take turns within each repeat and the best of the repeats is kept, so that a slow
    moment of a shared machine does not land on one setting only.
    """
    settings = ("none", "registered", "scraped")
    balancers = {setting: balancer() for setting in settings}
    registries = {setting: CollectorRegistry() for setting in settings}
    for setting in ("registered", "scraped"):
        registries[setting].register(ZklbCollector(balancers[setting]))
    results = {setting: {"get_server": float("inf"), "acquire": float("inf")} for setting in settings}
    scrapes = 0
    for _ in range(repeats):
        for setting in settings:
            lb = balancers[setting]
            for name, fn in (("get_server", lb.get_server), ("acquire", acquire_release(lb))):
                if setting == "scraped":
                    with Scraper(registries[setting]) as scraper:
                        ns = best_ns_per_call(fn, calls, 1)
                    scrapes += scraper.scrapes
                else:
                    ns = best_ns_per_call(fn, calls, 1)
                results[setting][name] = min(results[setting][name], ns)
    for lb in balancers.values():
        lb.close()
    return results, scrapes


def main() -> None:
    calls, repeats = calls_and_repeats(__doc__, full=(200_000, 7), quick=(50_000, 3))
    results, scrapes = measure(calls, repeats)
    print(f"{'call':<12}{'setting':<12}{'ns/call':>10}{'vs none':>9}")
    for name in ("get_server", "acquire"):
        base = results["none"][name]
        for setting in ("none", "registered", "scraped"):
            ns = results[setting][name]
            print(f"{name:<12}{setting:<12}{ns:>10.1f}{ns / base:>9.2f}")
    print(f"({scrapes} scrapes during the 'scraped' runs)")


if __name__ == "__main__":
    main()
