"""`ClientHandle`: the one kazoo client a zklb object uses, owned (made here) or borrowed, and its connect.

Every kazoo client zklb makes is made here (`make_client`, with zklb's retry and logging defaults and
the caller's checked ``kazoo_options``). A handle connects its client on first use, with a bounded wait
that ``close()`` can cut short, lets callers arriving meanwhile share that one attempt, and forgets (or
refuses) the parent's client in the child of a fork.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from zklb import _fork
from zklb._config import default_hosts
from zklb._outage import QuietKazooLog
from zklb._zk import DEFAULT_REQUEST_TIMEOUT
from zklb.errors import ClosedError, ConfigurationError, ForkError, RegistryError, ZklbError

__all__ = ["ClientHandle", "check_kazoo_options", "make_client"]

log = logging.getLogger("zklb")


#: kazoo options zklb sets from its own arguments, with the argument to use instead.
_OWN_OPTIONS = {
    "hosts": "the hosts string (the first argument)",
    "timeout": "session_timeout=",
    # zklb's worker, watches and events assume kazoo's default threading handler.
    "handler": "nothing: zklb works with kazoo's threading handler only",
}
_KAZOO_OPTIONS = frozenset(inspect.signature(KazooClient.__init__).parameters) - {"self", "kwargs"}


def check_kazoo_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``options`` as a dict of keyword arguments for `KazooClient`, or raise ConfigurationError.

    Options zklb sets itself (hosts, the session timeout) are refused rather than silently overridden
    one way or the other: each has exactly one place to be said.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"kazoo_options must be a mapping, got {type(options).__name__}")
    for name in options:
        if name in _OWN_OPTIONS:
            raise ConfigurationError(
                f"kazoo_options may not set {name!r}: zklb sets it from {_OWN_OPTIONS[name]}"
            )
        if name not in _KAZOO_OPTIONS:
            raise ConfigurationError(
                f"kazoo_options: {name!r} is not a KazooClient argument "
                f"(known: {', '.join(sorted(_KAZOO_OPTIONS - set(_OWN_OPTIONS)))})"
            )
    return dict(options)


def make_client(
    hosts: str, *, session_timeout: float = 10.0, kazoo_options: Mapping[str, Any] | None = None
) -> KazooClient:
    """A new, unstarted kazoo client for ``hosts``, configured as zklb runs its own clients.

    ``kazoo_options`` (checked by `check_kazoo_options`) are passed on; ``connection_retry`` and
    ``command_retry`` among them replace zklb's defaults.
    """
    quiet = QuietKazooLog()  # kazoo's lines under zklb.kazoo, one warning per outage
    options: dict[str, Any] = {
        # Keep reconnecting forever (the point is to survive outages), but never let one
        # command block for ever: commands go through bounded_retry instead.
        "connection_retry": KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=1.0),
        "command_retry": KazooRetry(max_tries=0),
        "logger": quiet,
    }
    options.update(check_kazoo_options(kazoo_options))
    client = KazooClient(hosts=hosts, timeout=session_timeout, **options)
    if options["logger"] is quiet:
        client.add_listener(quiet.on_state)
    return client


#: How often a connect in progress looks whether its handle was closed meanwhile (seconds).
_CLOSE_CHECK = 0.1

#: Clients zklb was given (borrowed), and those of them a fork's child inherited: the latter are the
#: parent's, whichever zklb object is handed one in the child.
_borrowed: weakref.WeakSet[KazooClient] = weakref.WeakSet()
_inherited: weakref.WeakSet[KazooClient] = weakref.WeakSet()


def _after_fork() -> None:
    _inherited.update(_borrowed)


_fork.on_child(_after_fork)


class ClientHandle:
    """A kazoo client that zklb either owns (made from a hosts string) or borrows (passed in).

    An owned client is created and started on first use and stopped by ``close()``; a borrowed one is
    never started or stopped here. Given another handle, this one is a *view* onto it: it uses that
    handle's client (connecting it if needed) but never stops or resets it, which is how a balancer
    shares its client with its watcher and registry, and a `zklb.Discovery` with everything it makes.
    ``None`` means the hosts in ``ZKLB_HOSTS`` (see `zklb._config`). ``kazoo_options`` go to
    ``KazooClient`` as they are. All kazoo clients zklb makes are made here, in `_new_client`.

    In the child of a fork an owned handle forgets the parent's client (without touching its session)
    and makes a new one on next use; a borrowed one raises `ForkError` from then on (see `zklb._fork`).
    """

    def __init__(
        self,
        client: str | KazooClient | ClientHandle | None,
        *,
        session_timeout: float = 10.0,
        kazoo_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._kazoo_options = check_kazoo_options(kazoo_options)
        if isinstance(client, KazooClient) and self._kazoo_options:
            raise ConfigurationError(
                "kazoo_options configure the kazoo client zklb makes from a hosts string; this "
                "KazooClient was made by you, so give those options to KazooClient(...) instead"
            )
        if isinstance(client, ClientHandle) and self._kazoo_options:
            raise ConfigurationError(
                "what a Discovery makes shares its kazoo client: give kazoo options to zklb.connect(...)"
            )
        self._parent: ClientHandle | None = None
        self._hosts: str | None = None
        self._client: KazooClient | None = None
        if client is None:
            client = default_hosts()
        if isinstance(client, ClientHandle):
            self._parent = client
        elif isinstance(client, str):
            if not client.strip():
                raise ValueError("ZooKeeper hosts must be a non-empty 'host:port[,host:port...]' string")
            self._hosts = client
        elif isinstance(client, KazooClient):
            self._client = client
            _borrowed.add(client)
        else:
            raise TypeError(f"expected a hosts string or a kazoo KazooClient, got {type(client).__name__}")
        self._session_timeout = session_timeout
        self._lock = threading.Lock()  # never held while connecting
        self._connecting: _Connect | None = None
        # kazoo's "connected" event of a client get_nowait() started, until get() has seen it set.
        self._first_connect: Any = None
        self._closed = False
        # A borrowed client, inherited across a fork: unusable here.
        self._forked = self._client is not None and self._client in _inherited
        _fork.track(self)

    @property
    def owned(self) -> bool:
        """True when zklb created this client and this handle stops it (False for a view)."""
        return self._hosts is not None

    @property
    def reconnects_after_fork(self) -> bool:
        """True when the client behind this handle is zklb's own, so a fork's child gets a new one."""
        return self._parent.reconnects_after_fork if self._parent is not None else self.owned

    def get(self, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> KazooClient:
        """The client, created and connected first if zklb owns it and has not yet.

        Callers arriving while a connect is in progress wait for that one attempt (each at most its own
        ``timeout``) rather than queue for attempts of their own; ``close()`` never waits for it.
        """
        if self._parent is not None:
            self._check_open()
            return self._parent.get(timeout)
        with self._lock:
            self._check_open()
            client = self._client
            first_connect = self._first_connect
            if client is not None and first_connect is None:
                return client
        if client is not None:
            return self._await_first_connect(client, first_connect, timeout)
        with self._lock:
            self._check_open()
            if self._client is not None:
                return self._client
            assert self._hosts is not None
            attempt = self._connecting
            mine = attempt is None
            if attempt is None:
                attempt = self._connecting = _Connect(self._new_client())
        if not mine:
            return self._join(attempt, timeout)
        client = attempt.client
        try:
            # Not kazoo's start(timeout): on a timeout it stops the client itself, and stop() waits for
            # the connection thread, which against a member that accepts and never answers sits out a
            # whole connect timeout (10 s) after the caller's own timeout is over.
            if not self._wait_live(client.start_async(), timeout) or not client.connected:
                raise KazooTimeoutError("Connection time-out")
        except Exception as exc:
            threading.Thread(target=_stop_quietly, args=(client,), name="zklb-stop", daemon=True).start()
            error = RegistryError(
                f"could not connect to ZooKeeper at {self._hosts} within {timeout:g} s: {exc}"
            )
            with self._lock:
                if self._connecting is attempt:
                    self._connecting = None
                attempt.finish(error)
            raise error from exc
        with self._lock:
            # A fork's child has its own `_connecting`; this attempt's client is then the parent's.
            current = self._connecting is attempt
            if current:
                self._connecting = None
            closed = self._closed or not current
            if not closed:
                self._client = client
            attempt.finish(ClosedError("closed while connecting") if closed else None)
        if closed:  # close() ran meanwhile: this client is nobody's
            _stop_quietly(client)
            raise ClosedError("this zklb component was closed while connecting")
        return client

    def get_nowait(self) -> KazooClient:
        """The client, made and told to connect in the background if there is none: never waits.

        For re-following after a fork: the caller watches the client's state (kazoo retries the
        connection until it is stopped) instead of waiting for it here.
        """
        if self._parent is not None:
            self._check_open()
            return self._parent.get_nowait()
        with self._lock:
            self._check_open()
            if self._client is not None:
                return self._client
            if self._connecting is not None:
                return self._connecting.client
            client = self._client = self._new_client()
            # Starts kazoo's threads and returns: the connecting happens on them (a close() after
            # this point finds the client in _client and stops it).
            self._first_connect = client.start_async()
        return client

    def check(self) -> None:
        """Raise `ClosedError` if closed, `ForkError` if the client is a borrowed one left by a fork."""
        self._check_open()

    def _await_first_connect(self, client: KazooClient, live: Any, timeout: float) -> KazooClient:
        """A client `get_nowait` made: ``get()`` still promises a connected one, the first time."""
        if not live.wait(timeout):
            raise RegistryError(f"could not connect to ZooKeeper at {self._hosts} within {timeout:g} s")
        with self._lock:
            if self._client is client:
                self._first_connect = None
        self._check_open()
        return client

    def _check_open(self) -> None:
        if self._parent is not None:
            self._parent._check_open()
        if self._closed:
            raise ClosedError("this zklb component was closed; create a new one")
        if self._forked:
            raise ForkError(
                "this zklb object was made before os.fork() on a KazooClient it does not own, and the "
                "parent's ZooKeeper session cannot be used in the child: make it after the fork, or "
                "pass a hosts string so that zklb reconnects by itself"
            )

    def _wait_live(self, live: Any, timeout: float) -> bool:
        """Wait for kazoo's connected event, in slices: a close() meanwhile ends the wait within one."""
        deadline = time.monotonic() + timeout
        while not live.wait(min(_CLOSE_CHECK, max(deadline - time.monotonic(), 0.0))):
            if self._closed or time.monotonic() >= deadline:
                return False
        return True

    def _join(self, attempt: _Connect, timeout: float) -> KazooClient:
        if not attempt.done.wait(timeout):
            raise RegistryError(f"could not connect to ZooKeeper at {self._hosts} within {timeout:g} s")
        if attempt.error is not None:
            raise attempt.error
        return attempt.client

    def _new_client(self) -> KazooClient:
        assert self._hosts is not None
        return make_client(
            self._hosts, session_timeout=self._session_timeout, kazoo_options=self._kazoo_options
        )

    def reset(self) -> None:
        """Stop an owned client after a failed start, so that the next ``get()`` connects afresh.

        A borrowed client, or a view's, is left alone. Unlike ``close()``, the handle stays usable.
        """
        with self._lock:
            client = self._client if self.owned else None
            if client is not None:
                self._client = None
                self._first_connect = None
        if client is not None:
            _stop_quietly(client)

    def peek(self) -> KazooClient | None:
        """The client if it exists, without creating it."""
        return self._parent.peek() if self._parent is not None else self._client

    def close(self) -> None:
        """Stop and close the client if zklb owns it; a borrowed client is left alone. Idempotent."""
        with self._lock:
            self._closed = True
            client, owned = self._client, self.owned
        if client is not None and owned:
            _stop_quietly(client)

    def _after_fork_in_child(self) -> None:
        """Forget the parent's client and connect attempt: neither is ours to use or to stop."""
        self._lock = threading.Lock()
        self._connecting = None
        self._first_connect = None
        if self._parent is None and self._client is not None:
            if self.owned:
                self._client = None
            else:
                self._forked = True


class _Connect:
    """One connect of an owned client in progress, that concurrent callers wait on together."""

    __slots__ = ("client", "done", "error")

    def __init__(self, client: KazooClient) -> None:
        self.client = client
        self.done = threading.Event()
        self.error: ZklbError | None = None

    def finish(self, error: ZklbError | None) -> None:
        self.error = error
        self.done.set()


def _stop_quietly(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # closing must not fail the caller's shutdown
        log.debug("error while stopping the kazoo client", exc_info=True)
