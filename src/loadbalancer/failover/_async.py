"""The asyncio failover engine: retries with backoff, per-try timeouts, and hedging.

Imported only by ``LoadBalancer.acall``, so that importing the core never loads asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeAlias, TypeVar, final

from .._errors import NoServersAvailableError
from .._lease import Lease
from ..strategies._base import Key
from ._budget import RetryBudget
from ._policy import (
    Attempt,
    AttemptTimeoutError,
    Classifier,
    HedgingPolicy,
    RetryPolicy,
    Verdict,
)
from ._sync import Acquire, judge

__all__ = ["acall"]

T = TypeVar("T")
_Answer: TypeAlias = "tuple[T | None, Exception | None]"

_log = logging.getLogger("loadbalancer")

# Attempts abandoned by a call that has already answered: cancelled, not awaited (a loser slow
# to unwind must not delay the winner's answer), and held here until done so that asyncio
# neither collects them early nor warns of an exception nobody retrieved.
_abandoned: set[asyncio.Task[object]] = set()


def _forget(task: asyncio.Task[object]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.debug("an abandoned attempt ended with %r", task.exception())


async def _attempt(
    fn: Callable[[str], Awaitable[T]], server: str, timeout: float | None
) -> _Answer[T]:
    """One attempt: its result or the Exception it raised (other BaseExceptions propagate)."""
    try:
        if timeout is None:
            return await fn(server), None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await asyncio.wait_for(fn(server), timeout), None
        except asyncio.TimeoutError as exc:  # TimeoutError from 3.11; a distinct class before
            if loop.time() < deadline:
                return None, exc  # the attempt's own timeout, not the policy's
            return None, AttemptTimeoutError(f"attempt on {server} took over {timeout:g} s")
    except Exception as exc:
        return None, exc


@final
class _Flight(Generic[T]):
    """The attempts of one call that are still running, each with its lease and number."""

    __slots__ = ("_acquire", "_budget", "_fn", "_key", "_timeout", "launched", "running", "tried")

    def __init__(
        self,
        acquire: Acquire,
        budget: RetryBudget,
        fn: Callable[[str], Awaitable[T]],
        key: Key | None,
        timeout: float | None,
    ) -> None:
        self._acquire = acquire
        self._budget = budget
        self._fn = fn
        self._key = key
        self._timeout = timeout
        self.launched = 0
        self.running: dict[asyncio.Task[_Answer[T]], tuple[Lease, int]] = {}
        self.tried: list[str] = []

    def launch(self) -> bool:
        """Start the next attempt on a server not tried yet; False if no server is left.

        The first attempt's ``NoServersAvailableError`` propagates: the call has no answer.
        """
        try:
            lease = self._acquire(self._key, self.tried) if self.tried else self._acquire(self._key)
        except NoServersAvailableError:
            if self.launched == 0:
                raise
            return False
        self.launched += 1
        self.tried.append(lease.server)
        task = asyncio.ensure_future(_attempt(self._fn, lease.server, self._timeout))
        self.running[task] = (lease, self.launched)
        return True

    def launch_extra(self, *, hedge: bool) -> bool:
        """Start one more attempt if the budget has a token for it; False if none went out."""
        if not self._budget.withdraw(hedge=hedge):
            return False
        if self.launch():
            return True
        self._budget.refund(hedge=hedge)
        return False

    def collect(
        self, done: set[asyncio.Task[_Answer[T]]], classify: Classifier[T]
    ) -> list[tuple[int, _Answer[T], Verdict]]:
        """Judge every finished attempt, in attempt order: (number, answer, verdict)."""
        judged = []
        for task in sorted(done, key=lambda t: self.running[t][1]):
            lease, number = self.running.pop(task)
            try:
                result, error = task.result()
            except BaseException:
                lease.release(ok=None)  # the attempt itself was cancelled: nothing learnt
                raise
            verdict = judge(lease, classify, Attempt(lease.server, number, result, error))
            judged.append((number, (result, error), verdict))
        return judged

    def abandon(self) -> None:
        """Cancel what still runs, ending each lease with no outcome (a lost race teaches
        nothing), without waiting for the attempts to unwind."""
        running, self.running = self.running, {}
        for task in running:
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
        for lease, _ in running.values():
            lease.release(ok=None)  # reads no clock, so it cannot fail half-way


async def acall(
    acquire: Acquire,
    budget: RetryBudget,
    fn: Callable[[str], Awaitable[T]],
    *,
    key: Key | None,
    policy: RetryPolicy,
    hedging: HedgingPolicy | None,
    classify: Classifier[T],
) -> T:
    """Await ``fn(server)`` with retries or hedging; see ``LoadBalancer.acall``."""
    budget.deposit()
    flight: _Flight[T] = _Flight(acquire, budget, fn, key, policy.per_try_timeout)
    limit = policy.attempts if hedging is None else hedging.attempts
    loop = asyncio.get_running_loop()
    flight.launch()
    next_hedge = None if hedging is None else loop.time() + hedging.delay
    answer: _Answer[T] = (None, None)
    try:
        while flight.running:
            wait = None
            if next_hedge is not None and flight.launched < limit:
                wait = max(next_hedge - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                flight.running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the hedging delay passed with no answer: one more, elsewhere
                assert hedging is not None
                next_hedge = loop.time() + hedging.delay
                if not flight.launch_extra(hedge=True):
                    next_hedge = None  # no token or no server: wait for those in flight
                continue
            judged = flight.collect(done, classify)
            for _, judged_answer, verdict in judged:
                if not verdict.retry:
                    return _give(judged_answer)
            number, answer, verdict = judged[-1]
            if hedging is not None:
                # gRPC A6: each retryable failure sends the next hedge at once.
                for _ in judged:
                    if flight.launched < limit and flight.launch_extra(hedge=True):
                        next_hedge = loop.time() + hedging.delay
            elif flight.launched < limit:
                delay = policy.delay(number, verdict)
                if delay is not None and budget.withdraw():
                    try:
                        await asyncio.sleep(delay)
                    except BaseException:
                        budget.refund()  # cancelled while waiting: the retry never went out
                        raise
                    if not flight.launch():
                        budget.refund()
        return _give(answer)
    finally:
        flight.abandon()


def _give(answer: _Answer[T]) -> T:
    result, error = answer
    if error is not None:
        raise error
    return result  # type: ignore[return-value]  # no error: the attempt returned a T
