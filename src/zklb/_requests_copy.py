"""The copy of a prepared request that the requests adapter sends to an instance, made cheaply.

Private to `zklb.requests`: each balanced request is sent as a copy addressed to the picked instance
(its scheme and authority replaced, the rest of the URL kept as is), with headers of its own.
"""

from __future__ import annotations

from urllib.parse import SplitResult

import requests
from requests.structures import CaseInsensitiveDict

from zklb.instance import DEFAULT_PORTS, ServiceInstance

__all__ = ["authority_of", "copy_for", "readdressed"]

_new = object.__new__


def authority_of(scheme: str, server: ServiceInstance, port: int) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return host if DEFAULT_PORTS[scheme] == port else f"{host}:{port}"


def readdressed(logical: str, parts: SplitResult, scheme: str, authority: str) -> str:
    """``logical`` with its scheme and authority replaced, the rest kept character for character."""
    head = f"{parts.scheme}://{parts.netloc}"
    if logical.startswith(head):  # always, for a URL requests prepared: no need to join the parts again
        return f"{scheme}://{authority}{logical[len(head) :]}"
    return parts._replace(scheme=scheme, netloc=authority).geturl()


def copy_for(request: requests.PreparedRequest, url: str) -> requests.PreparedRequest:
    """What ``request.copy()`` gives with ``url``, at a third of the cost.

    Every attribute is copied over (whatever requests adds), the headers into a dict of their own;
    the cookie jar, which ``copy()`` duplicates, is shared instead: `HTTPAdapter.send`, the only user
    of the copy, never reads it.
    """
    sent = _new(type(request))
    vars(sent).update(vars(request))
    sent.url = url
    headers = request.headers
    if type(headers) is CaseInsensitiveDict:
        copied: CaseInsensitiveDict[str] = _new(CaseInsensitiveDict)
        vars(copied)["_store"] = vars(headers)["_store"].copy()  # what copy() rebuilds item by item
        sent.headers = copied
    else:
        sent.headers = headers.copy()
    return sent
