"""call_held and acall_held: answers that keep their lease, and results that are freed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from loadbalancer import (
    AttemptTimeoutError,
    HedgingPolicy,
    Held,
    LoadBalancer,
    NoServersAvailableError,
    RetryBudget,
    RetryPolicy,
    Verdict,
)
from loadbalancer.testing import run


class Body:
    """A result holding a resource (an open response body), with a status."""

    def __init__(self, server: str, status: int) -> None:
        self.server = server
        self.status = status
        self.open = True
        self.set_aside = False

    def __repr__(self) -> str:
        return f"Body({self.server}, {self.status})"


class Freed:
    """The ``Results`` hooks, logging what the engine freed."""

    def __init__(self) -> None:
        self.kept: list[Body] = []
        self.discarded: list[Body] = []

    def _set_aside(self, body: Body) -> Body:
        self.kept.append(body)
        body.open = False
        kept = Body(body.server, body.status)
        kept.open, kept.set_aside = False, True
        return kept

    def discard(self, body: Body) -> None:
        self.discarded.append(body)
        body.open = False


class SyncFreed(Freed):
    def set_aside(self, body: Body) -> Body:
        return self._set_aside(body)


class AsyncFreed(Freed):
    async def set_aside(self, body: Body) -> Body:
        await asyncio.sleep(0)
        return self._set_aside(body)


def by_status(attempt: Any) -> Verdict:
    """503 is a retryable failure; anything else the server's success; errors retryable."""
    if attempt.error is not None:
        return Verdict(False, retry=True)
    return Verdict(attempt.result.status != 503, retry=attempt.result.status == 503)


def balancer(*servers: str, **options: Any) -> LoadBalancer:
    options.setdefault("sleep", lambda seconds: None)
    lb = LoadBalancer(**options)
    lb.replace(servers)
    return lb


def in_flight(lb: LoadBalancer) -> dict[str, int]:
    return {name: s.in_flight for name, s in lb.stats().items()}


def answers(statuses: dict[str, int]) -> Callable[[str], Body]:
    return lambda server: Body(server, statuses[server])


# -- call_held --------------------------------------------------------------------------------


def test_the_answer_keeps_its_lease_until_released() -> None:
    lb = balancer("a")
    held = lb.call_held(answers({"a": 200}), results=SyncFreed(), classify=by_status)
    assert isinstance(held, Held)
    assert (held.result.status, held.ok) == (200, True)
    assert in_flight(lb) == {"a": 1}
    assert held.release() is True
    assert held.release() is False
    assert in_flight(lb) == {"a": 0}
    assert lb.stats()["a"].successes == 1


def test_the_caller_may_change_the_outcome_before_release() -> None:
    lb = balancer("a")
    held = lb.call_held(answers({"a": 200}), results=SyncFreed(), classify=by_status)
    held.ok = False  # the body broke off after the headers
    held.release()
    stats = lb.stats()["a"]
    assert (stats.successes, stats.failures) == (0, 1)


def test_a_retried_result_is_set_aside_then_discarded_when_the_retry_answers() -> None:
    lb = balancer("a", "b")
    freed = SyncFreed()
    held = lb.call_held(answers({"a": 503, "b": 200}), results=freed, classify=by_status)
    assert (held.result.server, held.result.status) == ("b", 200)
    assert [b.server for b in freed.kept] == ["a"]
    assert [(b.server, b.set_aside) for b in freed.discarded] == [("a", True)]
    assert in_flight(lb) == {"a": 0, "b": 1}
    assert lb.stats()["a"].failures == 1


def test_with_no_server_left_the_set_aside_result_is_the_answer_without_a_lease() -> None:
    lb = balancer("a")
    freed = SyncFreed()
    budget = lb.retry_budget.stats()
    held = lb.call_held(answers({"a": 503}), results=freed, classify=by_status)
    assert held.lease is None
    assert (held.result.status, held.result.set_aside, held.ok) == (503, True, False)
    assert held.release() is False
    assert freed.discarded == []
    assert in_flight(lb) == {"a": 0}
    assert lb.retry_budget.stats().balance == budget.balance  # the token came back


def test_a_retry_never_goes_back_to_a_server_already_tried() -> None:
    lb = balancer("a", "b")
    seen: list[str] = []

    def attempt(server: str) -> Body:
        seen.append(server)
        return Body(server, 503)

    held = lb.call_held(
        attempt, results=SyncFreed(), retry=RetryPolicy(attempts=5), classify=by_status
    )
    assert seen == ["a", "b"]
    assert held.result.server == "b"


def test_a_classifier_that_raises_discards_the_result_with_no_outcome() -> None:
    lb = balancer("a")
    freed = SyncFreed()

    def broken(attempt: Any) -> Verdict:
        raise RuntimeError("classifier bug")

    with pytest.raises(RuntimeError, match="classifier bug"):
        lb.call_held(answers({"a": 200}), results=freed, classify=broken)
    assert [b.server for b in freed.discarded] == ["a"]
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.cancelled, stats.failures) == (0, 1, 0)


def test_an_interrupted_backoff_refunds_the_token_and_discards_the_set_aside_result() -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    lb = balancer("a", "b", sleep=interrupted)
    freed = SyncFreed()
    before = lb.retry_budget.stats()
    with pytest.raises(KeyboardInterrupt):
        lb.call_held(answers({"a": 503, "b": 200}), results=freed, classify=by_status)
    after = lb.retry_budget.stats()
    assert after.retries == before.retries
    assert [(b.server, b.set_aside) for b in freed.discarded] == [("a", True)]
    assert in_flight(lb) == {"a": 0, "b": 0}


def test_a_set_aside_that_fails_refunds_the_token() -> None:
    class Failing(SyncFreed):
        def set_aside(self, body: Body) -> Body:
            raise OSError("could not read the body")

    lb = balancer("a", "b")
    with pytest.raises(OSError, match="could not read"):
        lb.call_held(answers({"a": 503, "b": 200}), results=Failing(), classify=by_status)
    assert lb.retry_budget.stats().retries == 0
    assert in_flight(lb) == {"a": 0, "b": 0}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note is 3.11+")
def test_an_error_not_retried_for_want_of_budget_says_so() -> None:
    lb = balancer("a", "b", retry_budget=RetryBudget(ratio=0, reserve=1))

    def refused(server: str) -> Body:
        raise ConnectionRefusedError(server)

    with pytest.raises(ConnectionRefusedError) as first:
        lb.call(refused)
    assert not getattr(first.value, "__notes__", [])  # the reserve paid for its retry
    with pytest.raises(ConnectionRefusedError) as second:
        lb.call(refused)
    assert getattr(second.value, "__notes__", None) == [
        "loadbalancer: not retried on another server: the retry budget is exhausted"
    ]


def test_results_without_the_hooks_are_refused_naming_results() -> None:
    lb = balancer("a")
    with pytest.raises(TypeError, match="results must have set_aside and discard"):
        lb.call_held(answers({"a": 200}), results=object())  # type: ignore[arg-type]
    assert in_flight(lb) == {"a": 0}


# -- acall_held -------------------------------------------------------------------------------


def async_answers(
    statuses: dict[str, int], latency: dict[str, float] | None = None
) -> Callable[[str], Awaitable[Body]]:
    async def attempt(server: str) -> Body:
        await asyncio.sleep((latency or {}).get(server, 0.01))
        return Body(server, statuses[server])

    return attempt


def test_async_the_answer_keeps_its_lease_and_runs_in_the_callers_task() -> None:
    async def main() -> None:
        lb = balancer("a", "b", clock=asyncio.get_running_loop().time)
        caller = asyncio.current_task()
        tasks: list[asyncio.Task[Any] | None] = []

        async def attempt(server: str) -> Body:
            tasks.append(asyncio.current_task())
            await asyncio.sleep(0.01)
            return Body(server, 503 if server == "a" else 200)

        freed = AsyncFreed()
        held = await lb.acall_held(attempt, results=freed, classify=by_status)
        assert tasks == [caller, caller]  # no task per attempt without hedging
        assert (held.result.server, held.result.status) == ("b", 200)
        assert [b.server for b in freed.kept] == ["a"]
        assert [b.server for b in freed.discarded] == ["a"]
        assert in_flight(lb) == {"a": 0, "b": 1}
        held.release()
        assert in_flight(lb) == {"a": 0, "b": 0}

    run(main())


def test_async_a_per_try_timeout_answer_is_an_attempt_timeout_error() -> None:
    async def main() -> None:
        lb = balancer("a", clock=asyncio.get_running_loop().time)
        attempt = async_answers({"a": 200}, {"a": 30.0})
        start = asyncio.get_running_loop().time()
        with pytest.raises(AttemptTimeoutError, match="attempt on a took over 1 s"):
            await lb.acall_held(
                attempt, results=AsyncFreed(), retry=RetryPolicy(per_try_timeout=1.0)
            )
        # The timeout, and the backoff of a retry that found no other server.
        assert 1.0 <= asyncio.get_running_loop().time() - start <= 1.0 + 0.25
        assert lb.stats()["a"].failures == 1

    run(main())


def test_async_an_attempts_own_timeout_error_is_not_the_policys() -> None:
    async def main() -> None:
        lb = balancer("a", clock=asyncio.get_running_loop().time)

        async def attempt(server: str) -> Body:
            raise asyncio.TimeoutError("the client's own")

        with pytest.raises(asyncio.TimeoutError, match="the client's own") as raised:
            await lb.acall_held(
                attempt, results=AsyncFreed(), retry=RetryPolicy(per_try_timeout=5.0)
            )
        assert not isinstance(raised.value, AttemptTimeoutError)

    run(main())


def test_async_a_cancelled_call_ends_its_attempt_with_no_outcome() -> None:
    async def main() -> None:
        lb = balancer("a", clock=asyncio.get_running_loop().time)
        call = asyncio.ensure_future(
            lb.acall_held(async_answers({"a": 200}, {"a": 10.0}), results=AsyncFreed())
        )
        await asyncio.sleep(1.0)
        assert in_flight(lb) == {"a": 1}
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stats = lb.stats()["a"]
        assert (stats.in_flight, stats.cancelled, stats.failures) == (0, 1, 0)

    run(main())


def test_async_hedging_holds_the_winner_and_discards_a_late_loser() -> None:
    async def main() -> None:
        lb = balancer("slow", "fast", clock=asyncio.get_running_loop().time)
        freed = AsyncFreed()
        attempt = async_answers({"slow": 200, "fast": 200}, {"slow": 1.0, "fast": 0.1})
        held = await lb.acall_held(
            attempt, results=freed, hedging=HedgingPolicy(delay=0.2), classify=by_status
        )
        assert held.result.server == "fast"
        assert in_flight(lb) == {"slow": 0, "fast": 1}
        assert lb.stats()["slow"].cancelled == 1  # the lost race is no outcome
        held.release()
        await asyncio.sleep(2.0)
        assert freed.discarded == []  # the loser was cancelled before it answered

    run(main())


def test_async_hedging_discards_an_answer_that_arrives_with_the_winner() -> None:
    async def main() -> None:
        lb = balancer("a", "b", clock=asyncio.get_running_loop().time)
        freed = AsyncFreed()
        # b starts 0.1 s after a and answers 0.1 s sooner: both finish at once.
        attempt = async_answers({"a": 200, "b": 200}, {"a": 0.3, "b": 0.2})
        held = await lb.acall_held(
            attempt, results=freed, hedging=HedgingPolicy(delay=0.1), classify=by_status
        )
        assert held.result.server == "a"  # simultaneous answers: the first attempt wins
        assert [b.server for b in freed.discarded] == ["b"]
        assert in_flight(lb) == {"a": 1, "b": 0}
        held.release()

    run(main())


def test_async_hedging_sets_aside_retryable_answers_and_gives_the_last() -> None:
    async def main() -> None:
        lb = balancer("a", "b", clock=asyncio.get_running_loop().time)
        freed = AsyncFreed()
        attempt = async_answers({"a": 503, "b": 503})
        held = await lb.acall_held(
            attempt, results=freed, hedging=HedgingPolicy(delay=1.0), classify=by_status
        )
        assert (held.result.server, held.result.set_aside, held.lease) == ("b", True, None)
        assert [b.server for b in freed.kept] == ["a", "b"]
        assert [b.server for b in freed.discarded] == ["a"]
        assert in_flight(lb) == {"a": 0, "b": 0}

    run(main())


def test_async_an_empty_pool_raises_no_servers_available() -> None:
    async def main() -> None:
        lb = balancer(clock=asyncio.get_running_loop().time)
        for hedging in (None, HedgingPolicy(delay=0.1)):
            with pytest.raises(NoServersAvailableError):
                await lb.acall_held(async_answers({}), results=AsyncFreed(), hedging=hedging)

    run(main())


def test_a_retry_that_finds_only_servers_tried_counts_nothing_on_them() -> None:
    lb = balancer("a")
    held = lb.call_held(answers({"a": 503}), results=SyncFreed(), classify=by_status)
    assert held.result.status == 503
    stats = lb.stats()["a"]
    # One request, one failure: the retry's pick of "a" again was taken back, uncounted.
    assert (stats.picks, stats.failures, stats.cancelled, stats.in_flight) == (1, 1, 0, 0)
