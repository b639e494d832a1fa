"""The blocking failover engine: attempts, exclusion, backoff, classifiers and the budget."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import (
    Attempt,
    LoadBalancer,
    NoServersAvailableError,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    Verdict,
)
from loadbalancer.failover import FirstAttempt

from .collector import left_for_the_collector
from .fakes import FakeClock


class RefusedError(ConnectionError):
    """What a dead backend answers."""


def balancer(*servers: str, **options: object) -> tuple[LoadBalancer, list[float]]:
    """A balancer over ``servers`` whose backoff sleeps are recorded, not slept."""
    slept: list[float] = []
    lb = LoadBalancer(sleep=slept.append, **options)  # type: ignore[arg-type]
    lb.replace(servers)
    return lb, slept


def failing_on(*dead: str) -> tuple[list[str], Callable[[str], str]]:
    tried: list[str] = []

    def attempt(server: str) -> str:
        tried.append(server)
        if server in dead:
            raise RefusedError(server)
        return f"answer from {server}"

    return tried, attempt


def test_a_retry_goes_to_a_server_not_tried_yet() -> None:
    lb, slept = balancer("a", "b", "c")
    tried, attempt = failing_on("a", "b")
    answer = lb.call(attempt, retry=RetryPolicy(attempts=3))
    assert answer == "answer from c"
    assert tried == ["a", "b", "c"]
    assert len(slept) == 2
    stats = lb.stats()
    assert [(s.successes, s.failures, s.in_flight) for s in stats.values()] == [
        (0, 1, 0),
        (0, 1, 0),
        (1, 0, 0),
    ]


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    lb, _ = balancer("a", "b", "c", "d")
    tried, attempt = failing_on("a", "b", "c", "d")
    with pytest.raises(RefusedError, match="c"):
        lb.call(attempt, retry=RetryPolicy(attempts=3))
    assert tried == ["a", "b", "c"]


def test_default_policy_retries_once() -> None:
    lb, _ = balancer("a", "b", "c")
    tried, attempt = failing_on("a", "b", "c")
    with pytest.raises(RefusedError):
        lb.call(attempt)
    assert tried == ["a", "b"]


def test_a_verdict_that_is_not_retryable_ends_the_call() -> None:
    lb, slept = balancer("a", "b")
    tried, attempt = failing_on("a")
    with pytest.raises(RefusedError):
        lb.call(
            attempt,
            retry=RetryPolicy(attempts=3),
            classify=lambda a: Verdict(a.error is None),
        )
    assert tried == ["a"]
    assert slept == []


def test_a_retryable_result_is_returned_when_retries_run_out() -> None:
    lb, _ = balancer("a", "b")
    statuses = {"a": 503, "b": 503}

    def classify(attempt: Attempt[int]) -> Verdict:
        return Verdict(attempt.result != 503, retry=attempt.result == 503)

    assert lb.call(statuses.__getitem__, retry=RetryPolicy(attempts=2), classify=classify) == 503
    assert [s.failures for s in lb.stats().values()] == [1, 1]


def test_no_outcome_verdicts_count_nothing_against_the_server() -> None:
    lb, _ = balancer("a", "b")
    answer = lb.call(lambda s: s, classify=lambda a: Verdict(None))
    assert answer == "a"
    stats = lb.stats()["a"]
    assert (stats.successes, stats.failures, stats.cancelled) == (0, 0, 1)


def test_backoff_is_full_jitter_and_pushback_replaces_it() -> None:
    lb, slept = balancer("a", "b", "c", "d", "e")
    _, attempt = failing_on("a", "b", "c", "d", "e")
    policy = RetryPolicy(attempts=5, backoff_base=0.025, rng=random.Random(7))
    with pytest.raises(RefusedError):
        lb.call(attempt, retry=policy)
    expected = random.Random(7)
    ceilings = [0.025, 0.05, 0.1, 0.2]
    assert slept == [expected.random() * ceiling for ceiling in ceilings]
    capped = RetryPolicy(backoff_base=0.025, rng=random.Random(1))
    assert all(capped.backoff(30) <= 0.25 for _ in range(100))  # max 10x base, as Envoy

    lb, slept = balancer("a", "b")
    lb.call(
        lambda s: s,
        classify=lambda a: Verdict(False, retry=a.number == 1, retry_after=1.5),
    )
    assert slept == [1.5]


def test_a_classifier_that_raises_releases_with_no_outcome() -> None:
    lb, _ = balancer("a", "b")

    def broken(attempt: Attempt[str]) -> Verdict:
        raise RuntimeError("classifier bug")

    with pytest.raises(RuntimeError, match="classifier bug"):
        lb.call(lambda s: s, classify=broken)
    with pytest.raises(TypeError, match="classify must return a Verdict, not bool"):
        lb.call(lambda s: s, classify=lambda a: True)  # type: ignore[arg-type, return-value]
    stats = lb.stats()
    assert [(s.in_flight, s.cancelled, s.failures) for s in stats.values()] == [
        (0, 1, 0),
        (0, 1, 0),
    ]


def test_an_interrupt_is_no_outcome_and_is_never_retried() -> None:
    lb, _ = balancer("a", "b")
    tried: list[str] = []

    def interrupted(server: str) -> str:
        tried.append(server)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lb.call(interrupted, retry=RetryPolicy(attempts=3))
    assert tried == ["a"]
    assert lb.stats()["a"].cancelled == 1


def test_an_empty_pool_raises_and_servers_leaving_end_the_retries() -> None:
    lb, _ = balancer()
    with pytest.raises(NoServersAvailableError):
        lb.call(lambda s: s)
    clock = FakeClock()
    lb, _ = balancer(
        "a",
        "b",
        clock=clock,
        outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
        panic_threshold=0,
    )
    tried, attempt = failing_on("a", "b")
    with pytest.raises(RefusedError, match="b"):  # after b failed, every server was ejected
        lb.call(attempt, retry=RetryPolicy(attempts=3))
    assert tried == ["a", "b"]


def test_a_retried_key_lands_on_its_next_server() -> None:
    from loadbalancer import RendezvousStrategy

    lb, _ = balancer("a", "b", "c", "d", strategy=RendezvousStrategy())
    home = lb.get(key="user:42")
    second = lb.get(key="user:42", exclude={home})
    tried, attempt = failing_on(home)
    assert lb.call(attempt, key="user:42") == f"answer from {second}"
    assert tried == [home, second]


def test_bad_arguments_are_refused_naming_them() -> None:
    lb, _ = balancer("a")
    with pytest.raises(TypeError, match="fn must be callable"):
        lb.call("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        lb.call(lambda s: s, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts must be at most 5"):
        RetryPolicy(attempts=6)
    with pytest.raises(ValueError, match="backoff_max"):
        RetryPolicy(backoff_base=1.0, backoff_max=0.5)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=1.5)
    with pytest.raises(TypeError, match="retry_budget"):
        LoadBalancer(retry_budget=0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_after"):
        Verdict(False, retry=True, retry_after=-1)


# -- the budget ----------------------------------------------------------------------------


def attempts_when_everything_fails(budget: RetryBudget, callers: int, calls: int) -> int:
    """Attempts made by ``callers`` threads x ``calls`` calls each, every backend refusing."""
    lb, _ = balancer("a", "b", "c", "d", "e", retry_budget=budget)
    attempts = 0
    lock = threading.Lock()
    start = threading.Barrier(callers)

    def dead(server: str) -> str:
        nonlocal attempts
        with lock:
            attempts += 1
        raise RefusedError(server)

    def caller() -> None:
        start.wait()
        for _ in range(calls):
            with pytest.raises(RefusedError):
                lb.call(dead, retry=RetryPolicy(attempts=5))

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(s.in_flight == 0 for s in lb.stats().values())
    return attempts


@pytest.mark.parametrize("callers", [1, 8])
def test_when_every_backend_fails_attempts_stay_within_the_budget(callers: int) -> None:
    requests = callers * 250
    budget = RetryBudget()
    attempts = attempts_when_everything_fails(budget, callers, 250)
    assert attempts <= 1.2 * requests + 10
    stats = budget.stats()
    assert stats.requests == requests
    assert stats.retries == attempts - requests
    assert stats.rejected > 0
    assert attempts_when_everything_fails(RetryBudget.unlimited(), callers, 250) == 5 * requests


def test_a_healthy_budget_starts_full_and_refills_from_requests() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    assert [budget.withdraw(), budget.withdraw(), budget.withdraw()] == [True, True, False]
    budget.deposit()
    assert budget.withdraw() is False  # half a token is no retry
    budget.deposit()
    assert budget.withdraw(hedge=True) is True
    for _ in range(100):
        budget.deposit()
    stats = budget.stats()
    assert stats.balance == 2  # never more than the reserve
    assert (stats.requests, stats.retries, stats.hedges, stats.rejected) == (102, 2, 1, 2)
    assert repr(budget) == "RetryBudget(ratio=0.5, reserve=2)"


@given(st.lists(st.booleans(), max_size=300), st.floats(0, 1), st.integers(1, 20))
def test_extra_attempts_never_exceed_reserve_plus_ratio_of_requests(
    steps: list[bool], ratio: float, reserve: int
) -> None:
    budget = RetryBudget(ratio=ratio, reserve=reserve)
    requests = granted = 0
    for is_request in steps:
        if is_request:
            budget.deposit()
            requests += 1
        else:
            granted += budget.withdraw()
    assert granted <= reserve + ratio * requests + 1e-9


def test_a_pushback_longer_than_max_retry_after_is_not_waited_for() -> None:
    lb, slept = balancer("a", "b")
    tried, _ = failing_on()

    def attempt(server: str) -> int:
        tried.append(server)
        return 503

    def pushback(a: Attempt[int]) -> Verdict:
        return Verdict(False, retry=True, retry_after=3600.0)

    assert lb.call(attempt, classify=pushback, retry=RetryPolicy(max_retry_after=60)) == 503
    assert (tried, slept) == (["a"], [])
    assert lb.retry_budget.stats().retries == 0


def test_a_retry_with_no_server_left_gives_its_token_back() -> None:
    lb, _ = balancer("a", "b")

    def leaves(server: str) -> str:
        lb.replace([])  # the whole pool goes away during the attempt
        raise RefusedError(server)

    with pytest.raises(RefusedError):
        lb.call(leaves)
    assert lb.retry_budget.stats().retries == 0


def test_an_unhashable_exclude_is_refused_naming_exclude() -> None:
    lb, _ = balancer("a")
    with pytest.raises(TypeError, match="exclude"):
        lb.get(exclude=[["a"]])  # type: ignore[list-item]


def _every_server_failing(lb: LoadBalancer) -> None:
    lb.call(failing_on("a", "b")[1], retry=RetryPolicy(attempts=2))


def _the_classifier_failing_on_the_retry(lb: LoadBalancer) -> None:
    def classify(attempt: Attempt[str]) -> Verdict:
        if attempt.number == 2:
            raise ValueError("a broken classifier")
        return Verdict(ok=attempt.error is None, retry=attempt.error is not None)

    lb.call(failing_on("a", "b")[1], retry=RetryPolicy(attempts=2), classify=classify)


def _a_first_attempt_made_by_the_caller(lb: LoadBalancer) -> None:
    _, attempt = failing_on("a", "b")
    lb.retry_budget.deposit()
    lease = lb.acquire()
    try:
        attempt(lease.server)
    except RefusedError as error:  # the caller's frame catches it: in its traceback
        first: FirstAttempt[str] = FirstAttempt(lease, None, error, Verdict(ok=False, retry=True))
    lb.call_held(attempt, results=_NothingHeld(), first=first)


class _NothingHeld:
    """Results that hold nothing to free."""

    def set_aside(self, result: str) -> str:
        return result

    def discard(self, result: str) -> None:
        pass


@pytest.mark.parametrize(
    "failing",
    [
        _every_server_failing,
        _the_classifier_failing_on_the_retry,
        _a_first_attempt_made_by_the_caller,
    ],
    ids=["every_server_failing", "classifier_failing_on_the_retry", "first_attempt_by_the_caller"],
)
def test_a_failed_call_leaves_nothing_for_the_cyclic_collector(
    failing: Callable[[LoadBalancer], None],
) -> None:
    """A raised error's traceback holds the engine's frames: none may hold the error back."""
    balancers = [balancer("a", "b")[0] for _ in range(3)]
    with left_for_the_collector() as ours:
        for lb in balancers:
            with contextlib.suppress(RefusedError, ValueError):
                failing(lb)
    assert all(sum(s.failures for s in lb.stats().values()) >= 1 for lb in balancers)
    assert ours == []
