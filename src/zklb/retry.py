"""Retries on a different server: `RetryPolicy`, `RetryBudget`, and the attempt loop every transport shares.

How one logical request runs (``Attempts``), the same for httpx (sync and async) and requests:

1. The first attempt runs outside tenacity: ``lb.acquire()``, send. If its outcome is final (a success,
   a status that is not retryable, an error that is not retryable, a method or body that may not be
   replayed), it is returned as is. The common case therefore pays nothing for tenacity.
2. Otherwise the policy's tenacity controller is copied for this request (tenacity keeps per-call state
   on the controller) and takes over; its first "attempt" hands back the outcome of step 1, so waits,
   stops and attempt numbers are tenacity's own.
3. Every retry goes to a server not tried yet (``lb.acquire(exclude=tried)``), only if the shared
   `RetryBudget` has room at that moment. A retryable response is closed (its lease released) only once
   the next attempt has its server, so that when no retry can be made the caller still gets it, open.
4. When attempts run out the caller sees what a plain client would: the last retryable response
   (returned, not raised) or the last error; `NoServerAvailable` only if no server was ever picked.

Nothing here does I/O; the transports pass in a ``send(lease)`` function. The sync and async drivers
(``run`` and ``arun``) differ only in ``await``; every decision is made by shared methods.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import WaitBaseT, wait_base

from zklb.balancer import Lease, LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.instance import ServiceInstance

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "ExponentialBackoff",
    "RetryBudget",
    "RetryPolicy",
    "is_failure_status",
]

#: Methods retried by default: those RFC 9110 defines as idempotent (repeating them is harmless).
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses retried by default: the gateway errors, which say "this server could not serve it now".
RETRYABLE_STATUSES: frozenset[int] = frozenset({502, 503, 504})

R = TypeVar("R")


def is_failure_status(status: int) -> bool:
    """Whether a response with ``status`` counts as a failure of the server that sent it (any 5xx)."""
    return status >= 500


class ExponentialBackoff(wait_base):
    """A tenacity wait: exponential backoff with jitter, ``initial * 2**(n-1)`` capped at ``maximum``.

    ``jitter`` is the random share of each wait: 0 waits exactly the backoff, 1 waits anywhere between 0
    and it ("full jitter"), 0.5 (default) between half and all of it. ``rng`` makes the waits repeatable.
    Being a tenacity ``wait_base`` it combines with others (``ExponentialBackoff() + wait_fixed(1)``).
    """

    def __init__(
        self,
        initial: float = 0.01,
        maximum: float = 1.0,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or maximum < 0 or multiplier < 1:
            raise ValueError("initial and maximum must be >= 0 and multiplier >= 1")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        """The wait before the next attempt, after ``retry_state.attempt_number`` attempts."""
        exponent = max(retry_state.attempt_number - 1, 0)
        try:
            backoff = min(self.maximum, self.initial * self.multiplier**exponent)
        except OverflowError:  # a long-running policy: the cap has long been reached
            backoff = self.maximum
        spread = backoff * self.jitter
        return backoff - spread + self._rng.uniform(0.0, spread)

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(initial={self.initial}, maximum={self.maximum}, "
            f"multiplier={self.multiplier}, jitter={self.jitter})"
        )


class RetryBudget:
    """Caps concurrent retries at a share of concurrent requests, so that retries cannot snowball.

    A retry may start while ``retries in flight < max(min_retries, floor(ratio * requests in flight))``
    (the rule of Envoy's retry budget). When a server dies, a few requests at a time retry elsewhere; when
    the whole service is failing, most requests fail fast instead of multiplying the load by the
    number of attempts. A retry is in flight while it is being sent, not while it waits its backoff.

    One budget is shared by every request of a `RetryPolicy`; thread-safe (a short lock), O(1).
    """

    def __init__(self, ratio: float = 0.2, min_retries: int = 3) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio!r}")
        if min_retries < 0:
            raise ValueError(f"min_retries must be >= 0, got {min_retries!r}")
        self.ratio = ratio
        self.min_retries = min_retries
        self._lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._denied = 0

    @property
    def requests_in_flight(self) -> int:
        """Logical requests now being sent through the policy (retries are not counted twice)."""
        return self._requests

    @property
    def retries_in_flight(self) -> int:
        """Retry attempts now being sent."""
        return self._retries

    @property
    def denied(self) -> int:
        """How many retries the budget has refused so far."""
        return self._denied

    def request_started(self) -> None:
        """Count a logical request as in flight."""
        with self._lock:
            self._requests += 1

    def request_finished(self) -> None:
        """A logical request ended (each ``request_started`` is matched by exactly one call)."""
        with self._lock:
            self._requests -= 1

    def can_retry(self) -> bool:
        """Whether a retry may be made now; reserves nothing (see `try_begin_retry`), counts a no."""
        with self._lock:
            if self._retries < self._limit():
                return True
            self._denied += 1
            return False

    def try_begin_retry(self) -> bool:
        """Reserve room for one retry; False (and counted as denied) when the budget is spent."""
        with self._lock:
            if self._retries < self._limit():
                self._retries += 1
                return True
            self._denied += 1
            return False

    def retry_finished(self) -> None:
        """A retry reserved with `try_begin_retry` got its outcome."""
        with self._lock:
            self._retries -= 1

    def _limit(self) -> int:
        # Whole retries: with 4 requests in flight 20% allows none beyond min_retries (as Envoy floors it).
        # The epsilon keeps e.g. 0.29 * 100 (28.999999999999996 in floats) at 29.
        return max(self.min_retries, math.floor(self.ratio * self._requests + 1e-9))

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio} min_retries={self.min_retries} "
            f"requests={self._requests} retries={self._retries} denied={self._denied}>"
        )


class RetryPolicy:
    """When and how a request is retried on another server; shared by every transport it is given to.

    - ``attempts``: the most tries per request, the first included (3: the first and two retries).
    - ``statuses``: response statuses that are retried (the response is returned if none is left).
    - ``methods``: methods that may be retried; ``retry_non_idempotent=True`` allows every method (POST
      too: only when the server is known to de-duplicate, or the request is otherwise safe to repeat).
    - ``wait``: a tenacity wait between attempts (default `ExponentialBackoff`: 10 ms, 20 ms, ... 1 s).
    - ``stop``: an extra tenacity stop condition, e.g. ``stop_after_delay(2)``, or-ed with ``attempts``.
    - ``budget``: the `RetryBudget` (a new one by default; pass the same one to share it).
    - ``sleep`` / ``async_sleep``: how to wait, for tests (tenacity's ``sleep=``).

    Connection errors and timeouts are always retryable; which exact exceptions those are is up to each
    transport. Requests whose body cannot be sent twice (a generator, a file) are never retried.
    """

    def __init__(
        self,
        *,
        attempts: int = 3,
        statuses: Collection[int] = RETRYABLE_STATUSES,
        methods: Collection[str] = IDEMPOTENT_METHODS,
        retry_non_idempotent: bool = False,
        wait: WaitBaseT | None = None,
        stop: stop_base | None = None,
        budget: RetryBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        self.attempts = attempts
        self.statuses = frozenset(statuses)
        self.methods = frozenset(m.upper() for m in methods)
        self.retry_non_idempotent = retry_non_idempotent
        self.wait: WaitBaseT = wait if wait is not None else ExponentialBackoff()
        self.budget = budget if budget is not None else RetryBudget()
        limit = stop_after_attempt(attempts)
        self.stop: stop_base = limit if stop is None else limit | stop
        # Templates only: each request that needs a retry runs on a .copy(), because tenacity keeps the
        # state of a call (attempt number, statistics) on the controller object.
        self._retrying = Retrying(sleep=sleep, stop=self.stop, wait=self.wait)
        # Without an async_sleep, tenacity's own: asyncio's or trio's, whichever is running.
        self._async_retrying = (
            AsyncRetrying(stop=self.stop, wait=self.wait)
            if async_sleep is None
            else AsyncRetrying(sleep=async_sleep, stop=self.stop, wait=self.wait)
        )

    def allows(self, method: str) -> bool:
        """Whether requests with this method may be retried."""
        return self.retry_non_idempotent or method.upper() in self.methods

    def retries_status(self, status: int) -> bool:
        """Whether a response with this status is retried (on another server)."""
        return status in self.statuses

    def __repr__(self) -> str:
        methods = "all" if self.retry_non_idempotent else ",".join(sorted(self.methods))
        return (
            f"RetryPolicy(attempts={self.attempts}, statuses={sorted(self.statuses)}, methods={methods}, "
            f"wait={self.wait!r})"
        )


def resolve_policy(retry: RetryPolicy | bool | None) -> RetryPolicy | None:
    """The policy a transport uses for its ``retry=`` argument: True means a new default `RetryPolicy`."""
    if retry is True:
        return RetryPolicy()
    if retry is False or retry is None:
        return None
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, True, False or None, got {type(retry).__name__}")
    return retry


@dataclass(frozen=True, slots=True)
class ClientHooks(Generic[R]):
    """What the attempt loop needs to know about one HTTP client's responses and errors."""

    retryable_errors: tuple[type[BaseException], ...]
    status: Callable[[R], int]
    close: Callable[[R], None]
    aclose: Callable[[R], Awaitable[None]] | None = None


class _Outcome(Generic[R]):
    """A finished attempt: a response or an exception (to hand to tenacity or back to the caller)."""

    __slots__ = ("error", "response")

    def __init__(self, response: R | None, error: BaseException | None) -> None:
        self.response = response
        self.error = error

    def get(self) -> R:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


class Attempts(Generic[R]):
    """One logical request run as attempts on different servers: the core every transport shares.

    Internal to zklb's transports: build one per request, then ``run(send)`` or ``await arun(send)``,
    where ``send(lease)`` sends the request to ``lease.server`` and returns the response with the lease
    tied to it (released when the response is closed). ``send`` may raise; the lease is then released
    here as a failure.
    """

    __slots__ = (
        "_gave_up",
        "_hooks",
        "_last",
        "_lb",
        "_policy",
        "_replay",
        "_retrying_now",
        "_stale",
        "_tried",
    )

    def __init__(
        self,
        lb: LoadBalancer,
        policy: RetryPolicy | None,
        hooks: ClientHooks[R],
        *,
        method: str,
        replayable: bool,
    ) -> None:
        self._lb = lb
        self._hooks = hooks
        # A request that may not be retried needs no policy at all: skip every retry step.
        self._policy = policy if policy is not None and replayable and policy.allows(method) else None
        self._tried: list[ServiceInstance] = []
        self._replay: _Outcome[R] | None = None  # the first outcome, handed to tenacity
        self._last: _Outcome[R] | None = None  # the outcome a retry is replacing
        self._stale: R | None = None  # a retryable response to close once the retry has a server
        self._retrying_now = False  # holding a retry reservation in the budget
        self._gave_up = False

    # -- drivers: sync and async differ only in await -------------------------------------------------

    def run(self, send: Callable[[Lease], R]) -> R:
        """Send the request (blocking), retrying on other servers as the policy allows."""
        lease = self._first_lease()
        policy = self._policy
        if policy is None:
            return self._send(send, lease)
        policy.budget.request_started()
        try:
            try:
                response = self._send(send, lease)
            except Exception as exc:
                if not self._retries_error(exc):
                    raise
                self._replay = _Outcome(None, exc)
            else:
                if not self._retries_response(response):
                    return response
                self._replay = _Outcome(response, None)
            retrying = policy._retrying.copy(**self._tenacity_hooks(policy))
            return retrying(self._again, send)
        finally:
            stale = self._finish(policy)
            if stale is not None:
                self._hooks.close(stale)

    async def arun(self, send: Callable[[Lease], Awaitable[R]]) -> R:
        """Send the request (async), retrying on other servers as the policy allows."""
        lease = self._first_lease()
        policy = self._policy
        if policy is None:
            return await self._asend(send, lease)
        policy.budget.request_started()
        try:
            try:
                response = await self._asend(send, lease)
            except Exception as exc:
                if not self._retries_error(exc):
                    raise
                self._replay = _Outcome(None, exc)
            else:
                if not self._retries_response(response):
                    return response
                self._replay = _Outcome(response, None)
            retrying = policy._async_retrying.copy(**self._tenacity_hooks(policy))
            result: R = await retrying(self._aagain, send)
            return result
        finally:
            stale = self._finish(policy)
            if stale is not None:
                await self._aclose(stale)

    def _again(self, send: Callable[[Lease], R]) -> R:
        replay = self._take_replay()
        if replay is not None:
            return replay.get()
        lease = self._next_lease()
        if lease is None:
            return self._give_up()
        return self._send(send, lease, self._take_stale())

    async def _aagain(self, send: Callable[[Lease], Awaitable[R]]) -> R:
        replay = self._take_replay()
        if replay is not None:
            return replay.get()
        lease = self._next_lease()
        if lease is None:
            return self._give_up()
        return await self._asend(send, lease, self._take_stale())

    def _send(self, send: Callable[[Lease], R], lease: Lease, stale: R | None = None) -> R:
        # ``stale``: the retryable response this attempt replaces, closed now that a server is picked.
        try:
            if stale is not None:
                self._hooks.close(stale)
            return send(lease)
        except Exception:
            lease.release(False)
            raise
        except BaseException:  # cancelled or interrupted: says nothing about the server
            lease.cancel()
            raise

    async def _asend(self, send: Callable[[Lease], Awaitable[R]], lease: Lease, stale: R | None = None) -> R:
        try:
            if stale is not None:
                await self._aclose(stale)
            return await send(lease)
        except Exception:
            lease.release(False)
            raise
        except BaseException:  # cancelled or interrupted: says nothing about the server
            lease.cancel()
            raise

    async def _aclose(self, response: R) -> None:
        aclose = self._hooks.aclose
        if aclose is None:
            self._hooks.close(response)
        else:
            await aclose(response)

    # -- shared decisions ----------------------------------------------------------------------------

    def _first_lease(self) -> Lease:
        # NoServerAvailable here reaches the caller as is: there was never a server to try.
        lease = self._lb.acquire()
        self._tried.append(lease.server)
        return lease

    def _next_lease(self) -> Lease | None:
        """A server not tried yet, with room in the budget; None if the retry cannot be made."""
        assert self._policy is not None
        if not self._policy.budget.try_begin_retry():
            return None
        self._retrying_now = True
        try:
            lease = self._lb.acquire(exclude=self._tried)
        except NoServerAvailable:
            self._end_retry()
            return None
        self._tried.append(lease.server)
        return lease

    def _retries_error(self, error: BaseException | None) -> bool:
        return isinstance(error, self._hooks.retryable_errors)

    def _retries_response(self, response: R) -> bool:
        assert self._policy is not None
        return self._policy.retries_status(self._hooks.status(response))

    def _give_up(self) -> R:
        """Hand back the outcome the failed retry would have replaced (a response stays open)."""
        self._gave_up = True
        last, self._last, self._stale = self._last, None, None
        assert last is not None
        return last.get()

    def _take_replay(self) -> _Outcome[R] | None:
        replay, self._replay = self._replay, None
        return replay

    def _take_stale(self) -> R | None:
        stale, self._stale = self._stale, None
        return stale

    def _end_retry(self) -> None:
        if self._retrying_now:
            self._retrying_now = False
            assert self._policy is not None
            self._policy.budget.retry_finished()

    def _finish(self, policy: RetryPolicy) -> R | None:
        """End the request's budget accounting; returns a response that still has to be closed."""
        self._end_retry()
        policy.budget.request_finished()
        return self._take_stale()

    # -- tenacity callbacks ----------------------------------------------------------------------------

    def _tenacity_hooks(self, policy: RetryPolicy) -> dict[str, Any]:
        return {
            "retry": self._should_retry,
            "stop": self._stop,
            "before_sleep": self._before_sleep,
            "retry_error_callback": _last_outcome,
        }

    def _should_retry(self, state: RetryCallState) -> bool:
        # Called once per finished attempt: the retry that produced it is no longer in flight.
        self._end_retry()
        if self._gave_up:
            return False
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            return self._retries_error(outcome.exception())
        return self._retries_response(outcome.result())

    def _stop(self, state: RetryCallState) -> bool:
        # Checked before sleeping, so that a retry with no server or no budget left costs no wait.
        # The budget is reserved only after the wait (see _next_lease): a waiting retry loads nobody.
        assert self._policy is not None
        if self._policy.stop(state) or not self._policy.budget.can_retry():
            return True
        return not self._lb.has_server(exclude=self._tried)

    def _before_sleep(self, state: RetryCallState) -> None:
        # Only reached when a retry will be made: keep this outcome until the retry has a server.
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            self._last = _Outcome(None, outcome.exception())
        else:
            self._last = _Outcome(outcome.result(), None)
            self._stale = outcome.result()


def _last_outcome(state: RetryCallState) -> Any:
    # Out of attempts: return the last response or raise the last error, as a plain client would.
    assert state.outcome is not None
    return state.outcome.result()
