"""``acall_held(first=...)`` and ``call_held(first=...)``: the engine going on from a first
attempt the caller made."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from loadbalancer import Attempt, HedgingPolicy, LoadBalancer, RetryPolicy, Verdict
from loadbalancer.failover import FirstAttempt
from loadbalancer.testing import run

T = TypeVar("T")

OK, RETRY = Verdict(True), Verdict(False, retry=True)


def in_virtual_time(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return run(test(), start=100.0)


def balancer(*servers: str) -> LoadBalancer:
    lb = LoadBalancer(clock=asyncio.get_running_loop().time)
    lb.replace(servers)
    return lb


class Results:
    def __init__(self) -> None:
        self.discarded: list[str] = []

    async def set_aside(self, result: str) -> str:
        return result

    def discard(self, result: str) -> None:
        self.discarded.append(result)


def classify(attempt: Attempt[str]) -> Verdict:
    return RETRY if attempt.error is not None or attempt.result == "bad" else OK


def begun(lb: LoadBalancer, result: str | None, error: Exception | None) -> FirstAttempt[str]:
    """The first attempt as a caller makes it: deposit, lease, attempt, verdict."""
    lb.retry_budget.deposit()
    lease = lb.acquire()
    verdict = classify(Attempt(lease.server, 1, result, error))
    return FirstAttempt(lease, result, error, verdict)


def test_a_retry_goes_to_another_server_and_the_request_is_counted_once() -> None:
    async def main() -> None:
        lb = balancer("a", "b")
        calls: list[str] = []

        async def attempt(server: str) -> str:
            calls.append(server)
            return "good"

        first = begun(lb, "bad", None)
        tried = first.lease.server
        held = await lb.acall_held(
            attempt,
            results=Results(),
            retry=RetryPolicy(rng=random.Random(1)),
            classify=classify,
            first=first,
        )
        assert held.result == "good"
        assert calls == ["b" if tried == "a" else "a"]
        assert held.lease is not None
        assert held.lease.server != tried
        assert held.release()
        stats = lb.retry_budget.stats()
        assert (stats.requests, stats.retries) == (1, 1)
        assert all(s.in_flight == 0 for s in lb.stats().values())

    in_virtual_time(main)


def test_the_attempts_never_exceed_the_policys() -> None:
    async def main() -> None:
        lb = balancer("a", "b")

        async def attempt(server: str) -> str:
            raise AssertionError("no attempt is left")

        first = begun(lb, "bad", None)
        results = Results()
        held = await lb.acall_held(
            attempt, results=results, retry=RetryPolicy(attempts=1), classify=classify, first=first
        )
        assert held.result == "bad"
        assert held.lease is first.lease
        assert held.ok is False
        assert held.release()
        assert lb.retry_budget.stats().retries == 0

    in_virtual_time(main)


def test_a_failed_first_attempt_with_no_other_server_raises_its_error() -> None:
    async def main() -> None:
        lb = balancer("a")

        async def attempt(server: str) -> str:
            raise AssertionError("no server is left")

        error = ConnectionResetError("a")
        first = begun(lb, None, error)
        with pytest.raises(ConnectionResetError):
            await lb.acall_held(attempt, results=Results(), classify=classify, first=first)
        stats = lb.retry_budget.stats()
        assert (stats.requests, stats.retries) == (1, 0)  # the token went back
        assert lb.stats()["a"].in_flight == 0

    in_virtual_time(main)


def test_first_is_checked() -> None:
    async def main() -> None:
        lb = balancer("a")

        async def attempt(server: str) -> str:
            return server

        with pytest.raises(TypeError, match="first"):
            await lb.acall_held(attempt, results=Results(), first="a")  # type: ignore[arg-type]
        first = begun(lb, "bad", None)
        with pytest.raises(ValueError, match="hedging"):
            await lb.acall_held(
                attempt, results=Results(), hedging=HedgingPolicy(delay=0.1), first=first
            )
        first.lease.release(None)

    in_virtual_time(main)


# -- call_held(first=...): the blocking twin ---------------------------------------------------


class SyncResults:
    def __init__(self) -> None:
        self.discarded: list[str] = []

    def set_aside(self, result: str) -> str:
        return result

    def discard(self, result: str) -> None:
        self.discarded.append(result)


def sync_balancer(*servers: str) -> tuple[LoadBalancer, list[float]]:
    slept: list[float] = []
    lb = LoadBalancer(sleep=slept.append)
    lb.replace(servers)
    return lb, slept


def test_call_held_goes_on_from_a_first_attempt_on_another_server() -> None:
    lb, slept = sync_balancer("a", "b")
    calls: list[str] = []

    def attempt(server: str) -> str:
        calls.append(server)
        return "good"

    first = begun(lb, "bad", None)
    tried = first.lease.server
    results = SyncResults()
    held = lb.call_held(
        attempt,
        results=results,
        retry=RetryPolicy(rng=random.Random(1)),
        classify=classify,
        first=first,
    )
    assert held.result == "good"
    assert calls == ["b" if tried == "a" else "a"]
    assert results.discarded == ["bad"]  # the first result, superseded
    assert len(slept) == 1  # one backoff before the retry
    assert held.release()
    stats = lb.retry_budget.stats()
    assert (stats.requests, stats.retries) == (1, 1)  # the caller's deposit, not a second
    assert lb.stats()[tried].failures == 1
    assert all(s.in_flight == 0 for s in lb.stats().values())


def test_call_held_answers_a_first_attempt_that_needs_no_retry_with_its_lease() -> None:
    lb, _ = sync_balancer("a", "b")

    def attempt(server: str) -> str:
        raise AssertionError("no second attempt")

    first = begun(lb, "good", None)
    held = lb.call_held(attempt, results=SyncResults(), classify=classify, first=first)
    assert (held.result, held.lease, held.ok) == ("good", first.lease, True)
    assert held.release()


def test_call_held_raises_a_first_error_with_no_other_server_and_refunds() -> None:
    lb, _ = sync_balancer("a")

    def attempt(server: str) -> str:
        raise AssertionError("no server is left")

    first = begun(lb, None, ConnectionResetError("a"))
    with pytest.raises(ConnectionResetError):
        lb.call_held(attempt, results=SyncResults(), classify=classify, first=first)
    stats = lb.retry_budget.stats()
    assert (stats.requests, stats.retries) == (1, 0)
    assert lb.stats()["a"].in_flight == 0


def test_call_held_checks_first() -> None:
    lb, _ = sync_balancer("a")
    with pytest.raises(TypeError, match="first"):
        lb.call_held(str, results=SyncResults(), first="a")  # type: ignore[arg-type]
    assert lb.stats()["a"].in_flight == 0
