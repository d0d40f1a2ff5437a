"""A tiny WSGI app for the gunicorn --preload test: a LoadBalancer built at import, in the arbiter.

Each request answers with the worker's pid and the instance ids its balancer picks from, so the test
can see what every worker process sees. Configured by ZKLB_HOSTS and ZKLB_TEST_SERVICE.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from zklb import LoadBalancer

# Built and started before gunicorn forks its workers (--preload): each worker inherits it.
balancer = LoadBalancer(service=os.environ["ZKLB_TEST_SERVICE"]).start()


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """``{"pid": ..., "ids": [...]}``: what this worker's balancer picks from now."""
    balancer.get_server()  # a pick, as a real app would make, before reading the pool
    body = json.dumps({"pid": os.getpid(), "ids": sorted(balancer.membership.by_id)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
