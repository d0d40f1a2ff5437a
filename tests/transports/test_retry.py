"""zklb.retry without the network: backoff, budget, policy and the attempt loop, exact and fast.

The attempt loop runs against a static balancer and a fake client whose servers answer from a script;
sleeps are injected and recorded, so no test waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Mapping

import pytest
from tenacity import RetryCallState, Retrying, stop_after_delay

from zklb._attempts import Attempts, ClientHooks
from zklb.balancer import Lease, LoadBalancer
from zklb.errors import NoServerAvailable
from zklb.retry import (
    ExponentialBackoff,
    RetryBudget,
    RetryPolicy,
    resolve_policy,
)

URLS = ("http://10.0.0.1:81", "http://10.0.0.2:82", "http://10.0.0.3:83")


def state(attempt: int) -> RetryCallState:
    s = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    s.attempt_number = attempt
    return s


# -- backoff -----------------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    wait = ExponentialBackoff(0.01, 0.05, jitter=0)
    assert [wait(state(n)) for n in range(1, 6)] == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert wait(state(10_000)) == 0.05  # no overflow on a very long run


def test_backoff_jitter_stays_within_its_share() -> None:
    wait = ExponentialBackoff(1.0, 8.0, jitter=0.5, rng=random.Random(7))
    for n in range(1, 6):
        backoff = min(8.0, 2.0 ** (n - 1))
        assert all(backoff / 2 <= wait(state(n)) <= backoff for _ in range(50))
    again = ExponentialBackoff(1.0, 8.0, jitter=0.5, rng=random.Random(7))
    first = ExponentialBackoff(1.0, 8.0, jitter=0.5, rng=random.Random(7))
    assert [again(state(3)) for _ in range(5)] == [first(state(3)) for _ in range(5)]


@pytest.mark.parametrize("kwargs", [{"initial": -1}, {"multiplier": 0.5}, {"jitter": 1.5}])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]


# -- budget ------------------------------------------------------------------------------------------


def test_budget_allows_min_retries_then_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3)
    assert [budget.try_begin_retry() for _ in range(4)] == [True, True, True, False]
    for _ in range(20):
        budget.request_started()
    assert budget.can_retry()  # 20% of 20 requests = 4 retries
    assert budget.try_begin_retry()
    assert not budget.can_retry()
    assert budget.denied == 2
    for _ in range(4):
        budget.retry_finished()
    for _ in range(20):
        budget.request_finished()
    assert (budget.requests_in_flight, budget.retries_in_flight) == (0, 0)


def test_budget_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError):
        RetryBudget(min_retries=-1)


# -- policy ------------------------------------------------------------------------------------------


def test_policy_retries_idempotent_methods_only_by_default() -> None:
    policy = RetryPolicy()
    assert [policy.allows(m) for m in ("GET", "head", "PUT", "DELETE", "OPTIONS", "POST", "PATCH")] == [
        *[True] * 5,
        False,
        False,
    ]
    assert RetryPolicy(retry_non_idempotent=True).allows("POST")
    assert RetryPolicy(methods={"post"}).allows("POST")
    assert not RetryPolicy(methods={"post"}).allows("GET")
    assert [policy.retries_status(s) for s in (500, 502, 503, 504, 429)] == [False, True, True, True, False]


def test_policy_arguments() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    default = resolve_policy(True)
    assert isinstance(default, RetryPolicy)
    assert resolve_policy(True) is not default  # each transport gets its own budget by default
    assert resolve_policy(None) is None
    assert resolve_policy(False) is None
    assert resolve_policy(default) is default
    with pytest.raises(TypeError):
        resolve_policy("yes")  # type: ignore[arg-type]


# -- the attempt loop against a scripted client -------------------------------------------------------


class Refused(ConnectionError):
    """What the fake client raises for a server scripted to refuse."""


class FakeResponse:
    """A response whose lease is released on close, like the transports' responses."""

    def __init__(self, status: int, lease: Lease) -> None:
        self.status = status
        self.server = lease.server.url
        self.lease = lease
        self.closed = False
        self.closed_async = False

    def close(self) -> None:
        self.closed = True
        self.lease.release()

    async def aclose(self) -> None:
        self.closed_async = True
        self.close()


def _status(r: FakeResponse) -> int:
    return r.status


def _close(r: FakeResponse) -> None:
    r.close()


async def _aclose(r: FakeResponse) -> None:
    await r.aclose()


HOOKS: ClientHooks[FakeResponse] = ClientHooks(
    retryable_errors=(ConnectionError,), status=_status, close=_close, aclose=_aclose
)


class Fake:
    """Servers that answer from a script: a status, or "refuse" (raises `Refused`)."""

    def __init__(self, script: Mapping[str, int | str], *, strategy: str = "round_robin") -> None:
        self.lb = LoadBalancer.static(list(script), service="api", strategy=strategy)
        self.script = script
        self.sent: list[str] = []
        self.responses: list[FakeResponse] = []
        self.sleeps: list[float] = []

    def policy(self, **kwargs: object) -> RetryPolicy:
        async def async_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        options: dict[str, object] = {
            "sleep": self.sleeps.append,
            "async_sleep": async_sleep,
            "wait": ExponentialBackoff(jitter=0),
        }
        options.update(kwargs)
        return RetryPolicy(**options)  # type: ignore[arg-type]

    def send(self, lease: Lease) -> FakeResponse:
        url = lease.server.url
        self.sent.append(url)
        answer = self.script[url]
        if answer == "refuse":
            raise Refused(url)
        assert isinstance(answer, int)
        if answer >= 500:
            lease.report(False)  # as the transports do
        response = FakeResponse(answer, lease)
        self.responses.append(response)
        return response

    async def asend(self, lease: Lease) -> FakeResponse:
        await asyncio.sleep(0)
        return self.send(lease)

    def run(
        self,
        policy: RetryPolicy | None,
        method: str = "GET",
        *,
        replayable: bool = True,
        hooks: ClientHooks[FakeResponse] = HOOKS,
    ) -> FakeResponse:
        return Attempts(self.lb, policy, hooks, method=method, replayable=replayable).run(self.send)

    def arun(self, policy: RetryPolicy | None, method: str = "GET") -> FakeResponse:
        attempts = Attempts(self.lb, policy, HOOKS, method=method, replayable=True)
        return asyncio.run(attempts.arun(self.asend))

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """url -> (in flight, requests, failures)."""
        by_id = {s.id: s.url for s in self.lb.servers()}
        return {by_id[k]: (v.in_flight, v.requests, v.failures) for k, v in self.lb.stats().items()}


def test_each_retry_goes_to_a_server_not_tried_yet() -> None:
    fake = Fake({URLS[0]: 503, URLS[1]: "refuse", URLS[2]: 200})
    policy = fake.policy()
    for _ in range(6):  # round robin starts each request elsewhere
        fake.sent.clear()
        fake.sleeps.clear()
        response = fake.run(policy)
        assert response.status == 200
        response.close()
        assert fake.sent[-1] == URLS[2]
        assert len(set(fake.sent)) == len(fake.sent)  # never the same server twice
        assert fake.sleeps == pytest.approx([0.01, 0.02][: len(fake.sent) - 1])
    assert all(r.closed for r in fake.responses)  # the 503s were closed before their retries
    stats = fake.stats()
    assert stats[URLS[2]] == (0, 6, 0)
    assert all(s[0] == 0 and s[1] == s[2] for url, s in stats.items() if url != URLS[2])
    assert (policy.budget.requests_in_flight, policy.budget.retries_in_flight) == (0, 0)


def test_the_last_retryable_response_is_returned_open() -> None:
    fake = Fake(dict.fromkeys(URLS, 503))
    response = fake.run(fake.policy())
    assert response.status == 503
    assert sorted(fake.sent) == list(URLS)
    assert [r.closed for r in fake.responses] == [True, True, False]
    assert fake.stats()[response.server][0] == 1  # in flight until the caller closes it
    response.close()
    assert fake.stats() == dict.fromkeys(URLS, (0, 1, 1))


def test_the_last_error_is_raised() -> None:
    fake = Fake(dict.fromkeys(URLS, "refuse"))
    with pytest.raises(Refused) as raised:
        fake.run(fake.policy())
    assert sorted(fake.sent) == list(URLS)
    assert str(raised.value) == fake.sent[-1]
    assert fake.stats() == dict.fromkeys(URLS, (0, 1, 1))


def test_attempts_and_extra_stop_limit_the_tries() -> None:
    fake = Fake(dict.fromkeys(URLS, "refuse"))
    with pytest.raises(Refused):
        fake.run(fake.policy(attempts=2))
    assert len(fake.sent) == 2
    fake.sent.clear()
    with pytest.raises(Refused):
        fake.run(fake.policy(stop=stop_after_delay(0)))
    assert len(fake.sent) == 1


def test_no_server_at_all_raises_no_server_available() -> None:
    lb = LoadBalancer.static([], service="api")
    with pytest.raises(NoServerAvailable):
        Attempts(lb, RetryPolicy(), HOOKS, method="GET", replayable=True).run(lambda lease: pytest.fail())


def test_no_retry_for_post_unreplayable_body_other_statuses_or_errors() -> None:
    fake = Fake(dict.fromkeys(URLS, "refuse"))
    policy = fake.policy()
    with pytest.raises(Refused):
        fake.run(policy, "POST")
    with pytest.raises(Refused):
        fake.run(policy, "PUT", replayable=False)
    with pytest.raises(Refused):
        fake.run(None)
    assert len(fake.sent) == 3
    assert fake.sleeps == []

    fake = Fake(dict.fromkeys(URLS, 500))
    response = fake.run(fake.policy())
    assert response.status == 500  # a 5xx that is not a gateway error is final
    assert len(fake.sent) == 1
    response.close()

    def broken(lease: Lease) -> FakeResponse:
        raise ValueError("a bug, not a server failure to retry")

    with pytest.raises(ValueError):
        Attempts(fake.lb, policy, HOOKS, method="GET", replayable=True).run(broken)
    assert sum(s[0] for s in fake.stats().values()) == 0


def test_an_empty_budget_means_no_retry_and_no_wait() -> None:
    fake = Fake(dict.fromkeys(URLS, 503))
    budget = RetryBudget(ratio=0, min_retries=0)
    response = fake.run(fake.policy(budget=budget))
    assert (response.status, len(fake.sent), fake.sleeps, budget.denied) == (503, 1, [], 1)
    response.close()


def test_a_retry_that_loses_its_budget_while_waiting_returns_the_previous_outcome() -> None:
    budget = RetryBudget(min_retries=1)

    def sleep(seconds: float) -> None:
        budget.min_retries = 0  # the budget is spent by others while this request waits

    fake = Fake(dict.fromkeys(URLS, 503))
    response = fake.run(fake.policy(budget=budget, sleep=sleep))
    assert response is fake.responses[0]
    assert not response.closed  # kept open for the caller, not discarded
    response.close()
    assert (len(fake.sent), budget.denied, budget.retries_in_flight, budget.requests_in_flight) == (
        1,
        1,
        0,
        0,
    )

    fake = Fake(dict.fromkeys(URLS, "refuse"))
    budget.min_retries = 1
    with pytest.raises(Refused) as raised:
        fake.run(fake.policy(budget=budget, sleep=sleep))
    assert fake.sent == [str(raised.value)]


def test_a_single_server_is_not_retried() -> None:
    fake = Fake({URLS[0]: 503})
    response = fake.run(fake.policy())
    assert (response.status, fake.sleeps) == (503, [])
    response.close()


def test_async_driver_retries_and_closes_asynchronously() -> None:
    fake = Fake(dict.fromkeys(URLS, 503))
    response = fake.arun(fake.policy())
    assert response.status == 503
    assert [r.closed_async for r in fake.responses] == [True, True, False]
    response.close()
    assert fake.sleeps == pytest.approx([0.01, 0.02])

    fake = Fake(dict.fromkeys(URLS, "refuse"))
    with pytest.raises(Refused) as raised:
        fake.arun(fake.policy())
    assert (len(fake.sent), str(raised.value)) == (3, fake.sent[-1])


def test_concurrent_requests_keep_their_own_tenacity_state() -> None:
    # Two requests retry at the same time through one policy: each must get its own attempt count.
    fake = Fake({URLS[0]: "refuse", URLS[1]: "refuse", URLS[2]: "refuse"})
    both_waiting = threading.Barrier(2, timeout=5)

    def sleep(seconds: float) -> None:
        if threading.current_thread().name.startswith("req"):
            both_waiting.wait()

    policy = fake.policy(sleep=sleep, attempts=2)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            fake.run(policy)
        except Refused as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, name=f"req{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 2
    assert len(fake.sent) == 4  # two attempts each, not one shared count


# -- deadline: a fake clock that only the attempts and waits move --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def deadline_run(
    fake: Fake, clock: Clock, *, takes: float, method: str = "GET", **policy: object
) -> tuple[list[float | None], FakeResponse | BaseException]:
    """Run one request whose every attempt takes ``takes`` s or its cut timeout, whichever is shorter;
    returns the time each attempt was given and the outcome."""
    given: list[float | None] = []
    attempts = Attempts(
        fake.lb,
        fake.policy(clock=clock, sleep=clock.sleep, **policy),
        HOOKS,
        method=method,
        replayable=True,
    )

    def send(lease: Lease) -> FakeResponse:
        left = attempts.time_left()
        given.append(left)
        clock.now += takes if left is None else min(takes, left)
        return fake.send(lease)

    try:
        return given, attempts.run(send)
    except Refused as exc:
        return given, exc


def test_deadline_cuts_the_last_attempt_and_starts_none_after_it() -> None:
    fake, clock = Fake(dict.fromkeys(URLS, "refuse")), Clock()
    given, outcome = deadline_run(fake, clock, takes=0.5, deadline=0.8)
    assert given == pytest.approx([0.8, 0.29])  # 0.5 s, a 10 ms wait, then only what is left
    assert isinstance(outcome, Refused) and str(outcome) == fake.sent[-1]  # the last error, as is
    assert clock.now == pytest.approx(0.8)
    assert len(fake.sent) == 2

    fake, clock = Fake(dict.fromkeys(URLS, "refuse")), Clock()
    given, _ = deadline_run(fake, clock, takes=0.5)  # no deadline: the timeout is the caller's alone
    assert given == [None, None, None]
    assert clock.now == pytest.approx(1.53)


def test_no_wait_that_would_end_after_the_deadline() -> None:
    fake, clock = Fake(dict.fromkeys(URLS, 503)), Clock()
    _, outcome = deadline_run(fake, clock, takes=0.1, deadline=0.3, wait=ExponentialBackoff(0.5, jitter=0))
    assert isinstance(outcome, FakeResponse) and outcome.status == 503 and not outcome.closed
    assert (clock.sleeps, len(fake.sent)) == ([], 1)  # returned at once, not after a useless wait
    outcome.close()


def test_a_wait_that_ran_late_starts_no_attempt() -> None:
    fake, clock = Fake(dict.fromkeys(URLS, 503)), Clock()

    def late_sleep(seconds: float) -> None:
        clock.now += 4 * seconds  # an overloaded machine: the wait ends past the deadline

    policy = fake.policy(clock=clock, sleep=late_sleep, deadline=0.3, wait=ExponentialBackoff(0.1, jitter=0))
    response = Attempts(fake.lb, policy, HOOKS, method="GET", replayable=True).run(fake.send)
    assert (response.status, response.closed, len(fake.sent)) == (503, False, 1)
    assert policy.budget.denied == 0  # the deadline said no, not the budget
    response.close()


def test_deadline_applies_to_a_request_that_is_not_retried() -> None:
    fake, clock = Fake(dict.fromkeys(URLS, "refuse")), Clock()
    given, outcome = deadline_run(fake, clock, takes=5.0, method="POST", deadline=0.8)
    assert (given, len(fake.sent)) == ([0.8], 1)
    assert isinstance(outcome, Refused)


@pytest.mark.parametrize("deadline", [0, -1, float("nan")])
def test_deadline_must_be_positive(deadline: float) -> None:
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=deadline)


def test_a_retry_after_a_refused_connection_is_not_held_to_the_budget() -> None:
    # A refused connection reached no server: retrying it adds load nowhere, so an empty budget does not
    # stop it (the budget exists to keep retries from multiplying the load on servers).
    budget = RetryBudget(ratio=0, min_retries=0)
    hooks = dataclasses.replace(HOOKS, unsent=lambda error: isinstance(error, Refused))
    fake = Fake(dict.fromkeys(URLS, "refuse"))
    with pytest.raises(Refused):
        fake.run(fake.policy(budget=budget), hooks=hooks)
    assert (len(fake.sent), budget.denied) == (3, 0)  # every server tried
    # The same refusals without that knowledge are held to the empty budget: no retry.
    fake = Fake(dict.fromkeys(URLS, "refuse"))
    with pytest.raises(Refused):
        fake.run(fake.policy(budget=budget))
    assert (len(fake.sent), budget.denied) == (1, 1)
