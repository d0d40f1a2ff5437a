"""Prometheus metrics of a balancer that carries real requests (``pip install zklb[httpx,prometheus]``).

    python examples/prometheus_metrics.py

Starts its own single-node ZooKeeper (``zklb.testing``), two HTTP servers on 127.0.0.1 (one of which
refuses connections: its requests are retried on the other and it is ejected), sends ten requests through
the httpx transport, then prints what a Prometheus scrape of the balancer's series would return.
"""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from zklb import LoadBalancer
from zklb.httpx import LoadBalancedTransport
from zklb.prometheus import ZklbCollector
from zklb.testing import HTTPBackend, HTTPBackendHandler, ZooKeeperEnsemble


class Ok(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def main() -> None:
    with ZooKeeperEnsemble(size=1) as zk, HTTPBackend(Ok) as up, LoadBalancer(zk.hosts, "api") as lb:
        dead = HTTPBackend(Ok).start()
        dead.kill()  # registered, but refuses connections
        lb.add_server(up.url, id="up")
        lb.add_server(dead.url, id="down")

        registry = CollectorRegistry()  # in a service: prometheus_client.REGISTRY and start_http_server()
        registry.register(ZklbCollector(lb))

        with httpx.Client(transport=LoadBalancedTransport(lb)) as client:
            for i in range(10):
                client.get(f"http://api/items/{i}").raise_for_status()

        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("zklb_"):
                print(line)


if __name__ == "__main__":
    main()
