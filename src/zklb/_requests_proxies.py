"""Which proxies a load-balanced request uses: requests decided for the logical URL, not the instance's.

Private: `zklb.requests.LoadBalancedAdapter` sends each request to an instance's URL, but requests
chose the proxies (environment ones merged in unless ``NO_PROXY`` exempts it) for the logical URL
(``http://api/``); `proxies_for` makes that decision again, with requests' own functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.request import getproxies

import requests
from requests.utils import should_bypass_proxies

__all__ = ["proxies_for"]

# The environment variables whose proxies select_proxy() can pick for an http(s) URL (urllib reads both
# cases; requests' merge turns them into the keys "http", "https" and "all").
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# The same names as the keys of os.environ's own store on POSIX (see _environment_may_proxy).
_ENCODED_VARIABLES = tuple(os.fsencode(name) for name in _PROXY_VARIABLES)


def _environment_may_proxy() -> bool:
    """Whether a variable of `_PROXY_VARIABLES` is set and not empty: asked on every request.

    ``os.environ.get`` encodes the name and decodes the value on each call (~5 us for the six); on
    POSIX the mapping keeps them as bytes in ``_data``, which is read directly when it is there.
    """
    environ = os.environ
    data = getattr(environ, "_data", None) if os.name == "posix" else None
    if type(data) is not dict:  # another platform, or os.environ replaced (e.g. by a test)
        return any(environ.get(name) for name in _PROXY_VARIABLES)
    return any(map(data.get, _ENCODED_VARIABLES))


def proxies_for(
    session: requests.Session | None, logical: str, sent: str, proxies: Mapping[str, str] | None
) -> Mapping[str, str] | None:
    """The proxies requests would use for a request to ``sent``, given those it chose for ``logical``.

    requests merges the environment's proxies in (``HTTP_PROXY``, ...) unless ``NO_PROXY`` exempts
    the URL, and it decided that for the logical URL (``http://api/``). The instance's URL may be
    exempt when the logical one is not (``NO_PROXY=10.0.0.0/8``), or the other way round, so the
    decision is made again for it with requests' own functions. Proxies given explicitly (to the
    call, or on the session) apply to every URL in requests, and stay; one equal to the
    environment's own cannot be told apart from it and is taken for it. ``session`` None: the adapter
    was mounted by hand (or its session is gone), so whether it trusts the environment is unknown.
    """
    trust_env = None if session is None else session.trust_env  # None: mounted by hand, unknown
    if trust_env is False or (trust_env is None and not proxies):
        return proxies  # nothing from the environment in them, and none may be added
    # The common case, cheaply (getproxies() scans the whole environment, ~50 us): no environment
    # proxy that an http(s) URL could use. Variables in odd case (Http_Proxy) are left to requests.
    if not _environment_may_proxy():
        return proxies
    environment = getproxies()
    no_proxy = proxies.get("no_proxy") if proxies else None
    logical_proxied = not should_bypass_proxies(logical, no_proxy)
    if logical_proxied == (not should_bypass_proxies(sent, no_proxy)):
        return proxies
    session_proxies: Mapping[str, str] = {} if session is None else session.proxies
    if logical_proxied:  # the environment's proxies were merged in, but the instance is exempt
        kept = {
            k: v for k, v in (proxies or {}).items() if v not in (environment.get(k), environment.get("all"))
        }
        for key, value in session_proxies.items():  # shadowed by the environment's in requests' merge
            kept.setdefault(key, value)
        return kept
    if trust_env is None:
        # The logical URL is exempt, the instance is not: requests would proxy a request to it only
        # if the session trusts the environment, which an adapter mounted by hand cannot see. Never
        # add a proxy the session may not want.
        return proxies
    merged = dict(proxies or {})
    for key, value in environment.items():  # as Session.request merges: over the session's own
        if key not in merged or merged[key] == session_proxies.get(key):
            merged[key] = value
    return merged
