"""The asyncio failover engine, in virtual time: retries, per-try timeouts, hedging, cancels."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    LoadBalancer,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    Verdict,
)
from loadbalancer.testing import run

from .collector import left_for_the_collector

T = TypeVar("T")


def in_virtual_time(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return run(test(), start=100.0)


def balancer(*servers: str, **options: Any) -> LoadBalancer:
    """A balancer whose clock is the running loop's virtual clock."""
    lb = LoadBalancer(clock=asyncio.get_running_loop().time, **options)
    lb.replace(servers)
    return lb


def backends(latency: dict[str, float], failing: frozenset[str] = frozenset()) -> Any:
    """An attempt function: each server answers after its latency, or fails."""
    calls: list[tuple[str, float]] = []

    async def attempt(server: str) -> str:
        calls.append((server, asyncio.get_running_loop().time()))
        await asyncio.sleep(latency.get(server, 0.01))
        if server in failing:
            raise ConnectionResetError(server)
        return server

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


def test_a_failed_attempt_is_retried_elsewhere_after_the_backoff() -> None:
    async def main() -> None:
        lb = balancer("a", "b")
        attempt = backends({"a": 0.01, "b": 0.02}, failing=frozenset({"a"}))
        policy = RetryPolicy(rng=random.Random(3))
        start = asyncio.get_running_loop().time()
        assert await lb.acall(attempt, retry=policy) == "b"
        backoff = RetryPolicy(rng=random.Random(3)).backoff(1)
        assert attempt.calls == [("a", start), ("b", start + 0.01 + backoff)]
        assert asyncio.get_running_loop().time() == pytest.approx(start + 0.03 + backoff)
        stats = lb.stats()
        assert (stats["a"].failures, stats["b"].successes) == (1, 1)

    in_virtual_time(main)


def test_the_per_try_timeout_cancels_a_slow_attempt_and_counts_it_a_failure() -> None:
    async def main() -> None:
        lb = balancer("slow", "fast")
        attempt = backends({"slow": 30.0, "fast": 0.01})
        seen: list[type[Exception] | None] = []

        def classify(a: Any) -> Verdict:
            seen.append(None if a.error is None else type(a.error))
            return Verdict(a.error is None, retry=a.error is not None)

        policy = RetryPolicy(per_try_timeout=1.0, backoff_base=0)
        start = asyncio.get_running_loop().time()
        assert await lb.acall(attempt, retry=policy, classify=classify) == "fast"
        assert seen == [AttemptTimeoutError, None]
        assert asyncio.get_running_loop().time() == pytest.approx(start + 1.01)
        slow = lb.stats()["slow"]
        assert (slow.failures, slow.in_flight, slow.latency_ewma) == (1, 0, 1.0)

    in_virtual_time(main)


def test_a_hedge_answers_first_and_the_loser_ends_with_no_outcome() -> None:
    async def main() -> None:
        lb = balancer("slow", "fast", outlier_detection=OutlierDetection(consecutive_failures=1))
        attempt = backends({"slow": 1.0, "fast": 0.01})
        start = asyncio.get_running_loop().time()
        answer = await lb.acall(attempt, hedging=HedgingPolicy(delay=0.05))
        assert answer == "fast"
        assert attempt.calls == [("slow", start), ("fast", pytest.approx(start + 0.05))]
        assert asyncio.get_running_loop().time() == pytest.approx(start + 0.06)
        stats = lb.stats()
        assert (stats["slow"].cancelled, stats["slow"].failures, stats["slow"].in_flight) == (
            1,
            0,
            0,
        )
        assert not stats["slow"].ejected
        assert stats["fast"].successes == 1
        assert lb.retry_budget.stats().hedges == 1

    in_virtual_time(main)


def test_a_retryable_failure_sends_the_next_hedge_at_once() -> None:
    async def main() -> None:
        lb = balancer("broken", "b", "c")
        attempt = backends({"broken": 0.001, "b": 0.01}, failing=frozenset({"broken"}))
        start = asyncio.get_running_loop().time()
        assert await lb.acall(attempt, hedging=HedgingPolicy(delay=0.5, attempts=3)) == "b"
        assert attempt.calls == [("broken", start), ("b", pytest.approx(start + 0.001))]

    in_virtual_time(main)


def test_hedges_stop_at_the_attempt_limit_and_the_budget() -> None:
    async def main() -> None:
        lb = balancer("a", "b", "c", "d", retry_budget=RetryBudget(reserve=1, ratio=0))
        attempt = backends({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
        assert await lb.acall(attempt, hedging=HedgingPolicy(delay=0.1, attempts=4)) == "a"
        assert [server for server, _ in attempt.calls] == ["a", "b"]  # one token, one hedge
        assert lb.retry_budget.stats().rejected == 1

    in_virtual_time(main)


def test_cancelling_the_call_cancels_every_attempt_with_no_outcome() -> None:
    async def main() -> None:
        lb = balancer("a", "b", outlier_detection=OutlierDetection(consecutive_failures=1))
        attempt = backends({"a": 10.0, "b": 10.0})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lb.acall(attempt, hedging=HedgingPolicy(delay=0.1)), timeout=0.5)
        stats = lb.stats()
        assert [(s.in_flight, s.failures, s.cancelled) for s in stats.values()] == [
            (0, 0, 1),
            (0, 0, 1),
        ]
        assert not any(s.ejected for s in stats.values())

    in_virtual_time(main)


def test_when_every_attempt_fails_the_last_error_is_raised() -> None:
    async def main() -> None:
        lb = balancer("a", "b", "c")
        attempt = backends({}, failing=frozenset({"a", "b", "c"}))
        with pytest.raises(ConnectionResetError, match="c"):
            await lb.acall(attempt, retry=RetryPolicy(attempts=3))
        with pytest.raises(ConnectionResetError):
            await lb.acall(attempt, hedging=HedgingPolicy(delay=0.01, attempts=3))
        assert all(s.in_flight == 0 for s in lb.stats().values())

    in_virtual_time(main)


def test_bad_arguments_are_refused_naming_them() -> None:
    async def main() -> None:
        lb = balancer("a")
        with pytest.raises(TypeError, match="hedging"):
            await lb.acall(backends({}), hedging=0.1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="delay"):
            HedgingPolicy(delay=-1)

    in_virtual_time(main)


def p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(0.99 * len(latencies)) - 1]


async def latencies(lb: LoadBalancer, call: Callable[[], Awaitable[str]], n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    measured = []
    for _ in range(n):
        start = loop.time()
        await call()
        measured.append(loop.time() - start)
    return measured


def test_hedging_cuts_the_p99_when_one_server_is_slow() -> None:
    """Ten servers, one 100x slower: one request in ten waits a second without hedging."""

    async def main() -> tuple[float, float]:
        servers = [f"s{i}" for i in range(10)]
        latency = dict.fromkeys(servers, 0.01) | {"s3": 1.0}
        plain = balancer(*servers)
        attempt = backends(latency)
        without = p99(await latencies(plain, lambda: plain.acall(attempt), 1000))
        hedged_lb = balancer(*servers)
        policy = HedgingPolicy(delay=0.05)
        hedged = p99(
            await latencies(hedged_lb, lambda: hedged_lb.acall(attempt, hedging=policy), 1000)
        )
        assert hedged_lb.retry_budget.stats().rejected == 0  # 10% hedges fit a 20% budget
        return without, hedged

    without, hedged = in_virtual_time(main)
    assert without == pytest.approx(1.0)
    assert hedged == pytest.approx(0.06)


# -- regressions found in review -----------------------------------------------------------


def test_an_attempt_that_raises_cancelled_error_itself_leaves_nothing_in_flight() -> None:
    async def main() -> None:
        lb = balancer("a", "b")

        async def cancelled_inside(server: str) -> str:
            raise asyncio.CancelledError  # a future it awaited was cancelled by someone else

        with pytest.raises(asyncio.CancelledError):
            await lb.acall(cancelled_inside)
        stats = lb.stats()["a"]
        assert (stats.in_flight, stats.cancelled, stats.failures) == (0, 1, 0)

    in_virtual_time(main)


def test_a_clock_failing_while_attempts_are_abandoned_loses_no_lease() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        broken = False

        def clock() -> float:
            if broken:
                raise OSError("clock is gone")
            return loop.time()

        lb = LoadBalancer(clock=clock)
        lb.replace(["a", "b", "c"])

        def breaks() -> None:
            nonlocal broken
            broken = True

        loop.call_later(0.35, breaks)  # after both hedges went out
        attempt = backends({"a": 10.0, "b": 10.0, "c": 10.0})
        policy = HedgingPolicy(delay=0.1, attempts=3)
        with pytest.raises(asyncio.TimeoutError):  # the caller's error, not the clock's
            await asyncio.wait_for(lb.acall(attempt, hedging=policy), timeout=0.5)
        broken = False
        assert [(s.in_flight, s.cancelled) for s in lb.stats().values()] == [(0, 1)] * 3

    in_virtual_time(main)


def test_a_loser_slow_to_unwind_does_not_delay_the_winner() -> None:
    async def main() -> None:
        lb = balancer("slow", "fast")
        unwound = asyncio.Event()

        async def attempt(server: str) -> str:
            if server == "fast":
                await asyncio.sleep(0.01)
                return server
            try:
                await asyncio.sleep(10.0)
            except asyncio.CancelledError:
                await asyncio.sleep(2.0)  # a graceful close that takes its time
                unwound.set()
                raise
            return server

        start = asyncio.get_running_loop().time()
        assert await lb.acall(attempt, hedging=HedgingPolicy(delay=0.05)) == "fast"
        assert asyncio.get_running_loop().time() == pytest.approx(start + 0.06)
        assert lb.stats()["slow"].in_flight == 0
        await unwound.wait()  # and the loser still unwinds in the background

    in_virtual_time(main)


def test_attempts_finishing_together_are_all_judged() -> None:
    async def main() -> None:
        lb = balancer("a", "b", "c")
        # a fails at 0.15; the hedge sent to b at 0.1 answers at 0.15 too.
        attempt = backends({"a": 0.15, "b": 0.05}, failing=frozenset({"a"}))
        policy = HedgingPolicy(delay=0.1, attempts=3)
        assert await lb.acall(attempt, hedging=policy) == "b"
        stats = lb.stats()
        assert (stats["a"].failures, stats["a"].cancelled) == (1, 0)
        assert stats["c"].picks == 0  # no hedge wasted on c
        assert lb.retry_budget.stats().hedges == 1

    in_virtual_time(main)


def test_a_retry_cancelled_during_its_backoff_gives_its_token_back() -> None:
    async def main() -> None:
        lb = balancer("a", "b")
        attempt = backends({}, failing=frozenset({"a", "b"}))

        def pushback(a: Any) -> Verdict:
            return Verdict(False, retry=True, retry_after=5.0)

        balance = lb.retry_budget.stats().balance
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lb.acall(attempt, classify=pushback), timeout=1.0)
        stats = lb.retry_budget.stats()
        assert stats.retries == 0
        assert stats.balance == balance  # deposited 0.2, but the bucket was already full

    in_virtual_time(main)


def test_an_attempts_own_timeout_error_is_not_mistaken_for_the_per_try_timeout() -> None:
    async def main() -> None:
        lb = balancer("a", "b")
        seen: list[Exception | None] = []

        async def connect_timeout(server: str) -> str:
            await asyncio.sleep(0.1)
            raise TimeoutError("connect timed out")

        def classify(a: Any) -> Verdict:
            seen.append(a.error)
            return Verdict(False)

        policy = RetryPolicy(per_try_timeout=5.0)
        with pytest.raises(TimeoutError, match="connect timed out"):
            await lb.acall(connect_timeout, retry=policy, classify=classify)
        assert not isinstance(seen[0], AttemptTimeoutError)

    in_virtual_time(main)


_HEDGING = HedgingPolicy(delay=0.005)


def _refused_everywhere(**options: Any) -> Callable[[LoadBalancer], Awaitable[object]]:
    def call(lb: LoadBalancer) -> Awaitable[object]:
        attempt = backends({"a": 0.01, "b": 0.02}, failing=frozenset({"a", "b"}))
        return lb.acall(attempt, retry=RetryPolicy(attempts=2), **options)

    return call


async def _timing_out_everywhere(lb: LoadBalancer, hedging: HedgingPolicy | None) -> object:
    policy = RetryPolicy(attempts=2, per_try_timeout=0.01)
    return await lb.acall(backends({"a": 10.0, "b": 10.0}), retry=policy, hedging=hedging)


async def _cancelled_in_the_backoff(lb: LoadBalancer) -> None:
    attempt = backends({}, failing=frozenset({"a", "b"}))
    policy = RetryPolicy(attempts=2, backoff_base=10.0, rng=random.Random(3))  # 2.4 s
    call = asyncio.ensure_future(lb.acall(attempt, retry=policy))
    await asyncio.sleep(0.5)
    assert len(attempt.calls) == 1  # the first attempt failed: the retry waits its backoff
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call


def _not_retried(attempt: Attempt[str]) -> Verdict:
    return Verdict(ok=attempt.error is None, retry=False)


@pytest.mark.parametrize(
    "failing",
    [
        _refused_everywhere(),
        _refused_everywhere(hedging=_HEDGING),
        _refused_everywhere(hedging=_HEDGING, classify=_not_retried),
        lambda lb: _timing_out_everywhere(lb, None),
        lambda lb: _timing_out_everywhere(lb, _HEDGING),
        _cancelled_in_the_backoff,
    ],
    ids=[
        "every_server_failing",
        "every_hedge_failing",
        "a_hedge_failing_not_retried",
        "every_attempt_timing_out",
        "every_hedge_timing_out",
        "cancelled_in_the_backoff",
    ],
)
def test_a_failed_call_leaves_nothing_for_the_cyclic_collector(
    failing: Callable[[LoadBalancer], Awaitable[object]],
) -> None:
    """A raised error's traceback holds the engine's frames: none may hold the error back."""

    async def main() -> list[str]:
        balancers = [balancer("a", "b") for _ in range(3)]
        with left_for_the_collector() as ours:
            for lb in balancers:
                with contextlib.suppress(ConnectionResetError, AttemptTimeoutError):
                    await failing(lb)
            await asyncio.sleep(1)  # abandoned hedges unwind
        assert all(sum(s.failures for s in lb.stats().values()) >= 1 for lb in balancers)
        return ours

    assert in_virtual_time(main) == []
