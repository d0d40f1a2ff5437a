"""The attempt loop every transport shares: one logical request run as attempts on different servers.

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
5. Under a policy's deadline no attempt or wait starts that would end after it, and ``send`` cuts each
   attempt's timeout to `Attempts.time_left`, so the last attempt ends in the client's own timeout.

An ``https://`` request (``tls=True``) is only ever given instances with a TLS port: the transports
send it there (`ServiceInstance.endpoint`), and with none, `NoServerAvailable` says so before anything
is sent. Nothing here does I/O; the transports pass in a ``send(lease)`` function. The sync and async drivers
(``run`` and ``arun``) differ only in ``await``; every decision is made by shared methods.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import RetryCallState

from zklb.balancer import Lease, LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.instance import ServiceInstance
from zklb.retry import RetryPolicy
from zklb.strategies import HashKey

__all__ = ["Attempts", "ClientHooks", "end_lease", "is_cancellation"]

R = TypeVar("R")


def is_cancellation(error: BaseException | None) -> bool:
    """Whether ``error`` abandons a request without saying anything about its server.

    Cancellations and interrupts (``CancelledError``, ``KeyboardInterrupt``: not ``Exception``) do;
    ``GeneratorExit`` does not: it is a reader that stopped early, which the server served well enough.
    """
    return error is not None and not isinstance(error, Exception | GeneratorExit)


def end_lease(lease: Lease, cancelled: bool) -> None:
    """Release the lease of a response whose body is being closed, with no outcome if it was cancelled.

    ``cancelled``: a cancellation went through the body read. The close itself may also run while a
    cancellation propagates from elsewhere (the caller's code in a ``stream`` block, an event hook):
    the clients close responses in ``except BaseException`` / ``finally`` blocks and ``__exit__``,
    where ``sys.exception()`` is that cancellation. Either way the time so far is no latency and the
    request no success (docs/acquire.md), so the lease is cancelled rather than released. (The one
    case this misjudges is harmless: a response closed normally inside the caller's own
    ``except CancelledError:`` block records nothing, as if it had been cancelled.)
    """
    if cancelled or is_cancellation(sys.exception()):
        lease.cancel()
    else:
        lease.release()


@dataclass(frozen=True, slots=True)
class ClientHooks(Generic[R]):
    """What the attempt loop needs to know about one HTTP client's responses and errors."""

    retryable_errors: tuple[type[BaseException], ...]
    status: Callable[[R], int]
    close: Callable[[R], None]
    aclose: Callable[[R], Awaitable[None]] | None = None
    #: Whether an error proves the request reached no server (refused, or no connection in time).
    unsent: Callable[[BaseException], bool] = lambda error: False


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
    here as a failure. Under a policy with a deadline, ``send`` cuts its timeout to `time_left`.
    """

    __slots__ = (
        "_clock",
        "_deadline",
        "_errored",
        "_free",
        "_gave_up",
        "_hooks",
        "_key",
        "_last",
        "_lb",
        "_policy",
        "_replay",
        "_retrying_now",
        "_stale",
        "_tried",
        "tls",
    )

    def __init__(
        self,
        lb: LoadBalancer,
        policy: RetryPolicy | None,
        hooks: ClientHooks[R],
        *,
        method: str,
        replayable: bool,
        key: HashKey | None = None,
        tls: bool = False,
    ) -> None:
        self._lb = lb
        self._key = key  # consistent_hash's key: each attempt goes to the key's owner, then its next choices
        #: An https:// request: every attempt goes to an instance's TLS port, never to a plain one.
        self.tls = tls
        self._hooks = hooks
        # A request that may not be retried needs no policy at all: skip every retry step.
        self._policy = policy if policy is not None and replayable and policy.allows(method) else None
        # The deadline holds even when this request may not be retried: its one attempt is then the
        # last, and its timeout is cut all the same.
        self._deadline: float | None = None
        if policy is not None and policy.deadline is not None:
            self._clock = policy.clock
            self._deadline = self._clock() + policy.deadline
        # The rest of the state (see _begin_retries) is set only when a first outcome is retryable:
        # most requests never need it.
        self._tried: list[ServiceInstance]

    def _begin_retries(self, first: _Outcome[R]) -> None:
        self._replay: _Outcome[R] | None = first  # the first outcome, handed to tenacity
        self._last: _Outcome[R] | None = None  # the outcome a retry is replacing
        self._stale: R | None = None  # a retryable response to close once the retry has a server
        self._retrying_now = False  # holding a retry reservation in the budget
        self._gave_up = False
        # The last attempt reached no server, or its server has just been ejected: its retry is no
        # extra load on a live one, so the retry budget (which exists to stop retries from multiplying
        # the load) does not hold it back.
        self._free = False
        self._errored = False  # the last attempt raised (rather than returned a retryable status)

    def time_left(self) -> float | None:
        """Seconds until the policy's deadline (0 once it has passed), or None without a deadline."""
        deadline = self._deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._clock())

    # -- drivers: sync and async differ only in await -------------------------------------------------

    def run(self, send: Callable[[Lease], R]) -> R:
        """Send the request (blocking), retrying on other servers as the policy allows."""
        lease = self._first_lease()
        policy = self._policy
        if policy is None:
            return self._send(send, lease)
        budget = policy.budget
        budget.request_started()
        retrying = False
        try:
            try:
                response = self._send(send, lease)
            except Exception as exc:
                if not isinstance(exc, self._hooks.retryable_errors):
                    raise
                self._begin_retries(_Outcome(None, exc))
            else:
                if not policy.retries_status(self._hooks.status(response)):
                    return response
                self._begin_retries(_Outcome(response, None))
            retrying = True
            controller = policy._retrying.copy(**self._tenacity_hooks(policy))
            return controller(self._again, send)
        finally:
            if not retrying:
                budget.request_finished()
            else:
                stale = self._finish(policy)
                if stale is not None:
                    self._hooks.close(stale)

    async def arun(self, send: Callable[[Lease], Awaitable[R]]) -> R:
        """Send the request (async), retrying on other servers as the policy allows."""
        lease = self._first_lease()
        policy = self._policy
        if policy is None:
            return await self._asend(send, lease)
        budget = policy.budget
        budget.request_started()
        retrying = False
        try:
            try:
                response = await self._asend(send, lease)
            except Exception as exc:
                if not isinstance(exc, self._hooks.retryable_errors):
                    raise
                self._begin_retries(_Outcome(None, exc))
            else:
                if not policy.retries_status(self._hooks.status(response)):
                    return response
                self._begin_retries(_Outcome(response, None))
            retrying = True
            controller = policy._async_retrying.copy(**self._tenacity_hooks(policy))
            result: R = await controller(self._aagain, send)
            return result
        finally:
            if not retrying:
                budget.request_finished()
            else:
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
        lease = self._lb.acquire(key=self._key, tls=True) if self.tls else self._lb.acquire(key=self._key)
        self._tried = [lease.server]
        return lease

    def _next_lease(self) -> Lease | None:
        """A server not tried yet, with room in the budget; None if the retry cannot be made."""
        assert self._policy is not None
        if self.time_left() == 0.0:  # the wait ran late: no attempt starts after the deadline
            return None
        if not (self._free or self._left_for_dead()):
            if not self._policy.budget.try_begin_retry():
                return None
            self._retrying_now = True
        try:
            lease = self._lb.acquire(exclude=self._tried, key=self._key, tls=self.tls)
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
        self._errored = outcome.failed
        if outcome.failed:
            error = outcome.exception()
            self._free = error is not None and self._hooks.unsent(error)
            return self._retries_error(error)
        self._free = False
        return self._retries_response(outcome.result())

    def _left_for_dead(self) -> bool:
        # Retrying away from an instance passive health has just ejected is failover, not a retry
        # storm: the budget still bounds retries when failures are spread over the pool, where at
        # most the ejection cap's share can be ejected.
        return bool(self._tried) and self._lb._is_ejected(self._tried[-1].id)

    def _stop(self, state: RetryCallState) -> bool:
        # Checked before sleeping, so that a retry with no server or no budget left costs no wait.
        # The budget is reserved only after the wait (see _next_lease): a waiting retry loads nobody.
        assert self._policy is not None
        if self._policy.stop(state):
            return True
        deadline = self._deadline
        # A wait that would end at the deadline leaves no time to send: stop now, without waiting.
        # (upcoming_sleep is set before stop is asked since tenacity 8.3; older ones give no wait.)
        if deadline is not None and self._clock() + getattr(state, "upcoming_sleep", 0.0) >= deadline:
            return True
        # After an error, the budget is asked only after the wait (in _next_lease): a server that
        # has just died is ejected within its first few failures, and the retries away from it are
        # then free. A retryable status is no such sign, so there the budget can stop before waiting.
        if not self._free and not self._errored and not self._policy.budget.can_retry():
            return True
        return not self._lb.has_server(exclude=self._tried, tls=self.tls)

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
