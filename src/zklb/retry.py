"""Retries on a different server: `RetryPolicy`, `RetryBudget` and `ExponentialBackoff`.

The policy says when and how a request is retried; the attempt loop that applies it, shared by every
transport, is ``zklb._attempts.Attempts`` (internal).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from itertools import count

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import WaitBaseT, wait_base

from zklb.stats import count_value

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

    One budget is shared by every request of a `RetryPolicy`; thread-safe, O(1). Every request starts
    and ends in it, so those two take no lock: they count on ``itertools.count`` objects, whose
    ``next()`` is atomic under the GIL; the retry decisions (rare) take a short lock.
    """

    def __init__(self, ratio: float = 0.2, min_retries: int = 3) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio!r}")
        if min_retries < 0:
            raise ValueError(f"min_retries must be >= 0, got {min_retries!r}")
        self.ratio = ratio
        self.min_retries = min_retries
        self._lock = threading.Lock()
        self._started = count()  # logical requests: in flight = started - finished
        self._finished = count()
        self._retries = 0
        self._denied = 0

    @property
    def requests_in_flight(self) -> int:
        """Logical requests now being sent through the policy (retries are not counted twice)."""
        # finished first: a request that ends between the two reads is never counted below zero.
        finished = count_value(self._finished)
        return count_value(self._started) - finished

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
        next(self._started)

    def request_finished(self) -> None:
        """A logical request ended (each ``request_started`` is matched by exactly one call)."""
        next(self._finished)

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
        return max(self.min_retries, math.floor(self.ratio * self.requests_in_flight + 1e-9))

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio} min_retries={self.min_retries} "
            f"requests={self.requests_in_flight} retries={self._retries} denied={self._denied}>"
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
    - ``deadline``: seconds for the whole request, every attempt and wait included (None: no limit).
      The client's own timeout applies to each attempt; the deadline bounds them all: no attempt (and
      no wait) starts that would end after it, and each attempt's timeout is cut to the time left, so
      when it runs out the caller gets the client's own timeout error (Envoy's route timeout over its
      per-try timeout).
    - ``sleep`` / ``async_sleep``: how to wait, for tests (tenacity's ``sleep=``).
    - ``clock``: the monotonic clock the deadline is measured on, for tests.

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
        deadline: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        if deadline is not None and not deadline > 0:  # also refuses NaN
            raise ValueError(f"deadline must be a positive number of seconds or None, got {deadline!r}")
        self.deadline = deadline
        self.clock = clock
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
            f"wait={self.wait!r}, deadline={self.deadline})"
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
