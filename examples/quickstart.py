"""The quick start (docs/quickstart.md): a local ZooKeeper, two servers, a balanced httpx client.

python examples/quickstart.py
"""

from collections import Counter

import httpx

from zklb import LoadBalancer, Registry
from zklb.httpx import LoadBalancedTransport
from zklb.testing import HTTPBackend, HTTPBackendHandler, ZooKeeperEnsemble


class Hello(HTTPBackendHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = f"hello from port {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


with ZooKeeperEnsemble(size=1) as zk, HTTPBackend(Hello) as one, HTTPBackend(Hello) as two:
    # Servers register themselves (in your services: at start-up, with their own URL).
    registry = Registry(zk.hosts)
    registry.register("api", one.url)
    registry.register("api", two.url, weight=2)

    # A client balances over whatever is registered under "api".
    lb = LoadBalancer(zk.hosts, service="api", strategy="weighted_round_robin")
    with lb, httpx.Client(transport=LoadBalancedTransport(lb)) as client:
        served = Counter(client.get("http://api/hello").text for _ in range(30))
    print(served)  # two's port answers twice as often as one's
    registry.close()
