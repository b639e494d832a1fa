"""The asyncio failover engine: retries with backoff, per-try timeouts, and hedging.

Imported only by ``LoadBalancer.acall``, so that importing the core never loads asyncio.
Without hedging, attempts are awaited one after another in the caller's own task (no task
per attempt: that would cost more than the rest of the call); with hedging, each attempt
runs as a task of its own, so that several can be in flight at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Generic, TypeAlias, TypeVar, final

from .._lease import Lease
from ..strategies._base import Key
from ._budget import RetryBudget
from ._held import AsyncResults, FirstAttempt, Held
from ._policy import AttemptTimeoutError, Classifier, HedgingPolicy, RetryPolicy, Verdict
from ._sync import Acquire, Tries, note_budget

__all__ = ["acall"]

T = TypeVar("T")
_Answer: TypeAlias = "tuple[T | None, Exception | None]"

_log = logging.getLogger("loadbalancer")

# Attempts abandoned by a call that has already answered: cancelled, not awaited (a loser slow
# to unwind must not delay the winner's answer), and held here until done so that asyncio
# neither collects them early nor warns of an exception nobody retrieved.
_abandoned: set[asyncio.Task[object]] = set()


if sys.version_info >= (3, 11):

    async def _timed(attempt: Awaitable[T], timeout: float, server: str) -> T:
        """``await attempt``, cancelled past ``timeout`` with an ``AttemptTimeoutError``."""
        scope = asyncio.timeout(timeout)  # no task of its own, unlike wait_for before 3.12
        try:
            async with scope:
                return await attempt
        except TimeoutError:
            if not scope.expired():
                raise  # the attempt's own timeout, not the policy's
        # Raised outside the handler (no TimeoutError for its context) and without the scope:
        # both hold this task, and a hedge's task holds its error in turn, as its result.
        del scope
        raise AttemptTimeoutError(f"attempt on {server} took over {timeout:g} s")

else:

    async def _timed(attempt: Awaitable[T], timeout: float, server: str) -> T:
        """``await attempt``, cancelled past ``timeout`` with an ``AttemptTimeoutError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await asyncio.wait_for(attempt, timeout)
        except asyncio.TimeoutError:
            if loop.time() < deadline:
                raise  # the attempt's own timeout, not the policy's
            raise AttemptTimeoutError(f"attempt on {server} took over {timeout:g} s") from None


async def _attempt(
    fn: Callable[[str], Awaitable[T]], server: str, timeout: float | None
) -> _Answer[T]:
    """One attempt: its result or the Exception it raised (other BaseExceptions propagate)."""
    try:
        if timeout is None:
            return await fn(server), None
        return await _timed(fn(server), timeout, server), None
    except Exception as exc:
        return None, exc


async def _one_by_one(
    tries: Tries[T],
    fn: Callable[[str], Awaitable[T]],
    timeout: float | None,
    results: AsyncResults[T] | None,
    first: FirstAttempt[T] | None = None,
) -> Held[T]:
    """Retries one after another: the asyncio twin of ``_sync.call``, step for step; from
    ``first``'s verdict on, if the caller made the first attempt."""
    lease = tries.first() if first is None else first.lease
    try:
        while True:
            if first is not None:
                result: T | None = first.result
                error: Exception | None = first.error
                verdict = first.verdict
                first.result = first.error = None  # taken: see the finally below
                first = None
            else:
                server = lease.server
                try:  # _attempt, inlined: a coroutine less per attempt
                    if timeout is None:
                        result = await fn(server)
                    else:
                        result = await _timed(fn(server), timeout, server)
                    error = None
                except Exception as exc:
                    result, error = None, exc
                except BaseException:
                    lease.release(ok=None)  # the caller went away: nothing learnt about the server
                    raise
                verdict = tries.judge(lease, tries.number, result, error)
            delay = tries.retry_delay(lease, verdict, error)
            if delay is None:
                return tries.answer(lease, verdict, result, error)
            if results is not None and error is None:
                try:
                    result = await results.set_aside(result)  # type: ignore[arg-type]  # a T
                except BaseException:
                    tries.refund()  # set_aside freed the result, or failed trying
                    raise
            try:
                await asyncio.sleep(delay)
                retry = tries.next_lease()
            except BaseException:
                tries.refund()  # cancelled while waiting: the retry never went out
                if error is None:
                    tries.discard(result)
                raise
            if retry is None:
                return tries.answer(None, verdict, result, error)
            if error is None:
                tries.discard(result)  # superseded by the retry
            lease = retry
    finally:
        # An error raised from here has this frame in its traceback: the frame must not hold
        # it in turn (nor may the first attempt, which the callers' frames keep), or the two,
        # and all they reach, wait for the cyclic collector.
        error = None


@final
class _Judged(Generic[T]):
    """A finished hedged attempt, with its verdict."""

    __slots__ = ("error", "lease", "number", "result", "verdict")

    def __init__(
        self, lease: Lease, number: int, result: T | None, error: Exception | None, v: Verdict
    ) -> None:
        self.lease = lease
        self.number = number
        self.result = result
        self.error = error
        self.verdict = v

    def taken(self) -> tuple[Verdict, T | None, Exception | None]:
        """Its verdict, result and error, which it lets go of: as the call's answer, an error
        is raised with a traceback that holds the frames keeping this attempt."""
        taken = self.verdict, self.result, self.error
        self.result = self.error = None
        return taken


@final
class _Flight(Generic[T]):
    """The hedged attempts of one call that are still running, each with its lease and number."""

    __slots__ = ("_fn", "_timeout", "_tries", "launched", "refused", "running")

    def __init__(
        self, tries: Tries[T], fn: Callable[[str], Awaitable[T]], timeout: float | None
    ) -> None:
        self._tries = tries
        self._fn = fn
        self._timeout = timeout
        self.launched = 0
        self.refused = False  # the budget refused a hedge
        self.running: dict[asyncio.Task[_Answer[T]], tuple[Lease, int]] = {}

    def launch(self) -> bool:
        """Start the next attempt on a server not tried yet; False if no server is left.

        The first attempt's ``NoServersAvailableError`` propagates: the call has no answer.
        """
        tries = self._tries
        if self.launched == 0:
            lease: Lease | None = tries.first()
            tries.tried.append(lease.server)  # type: ignore[union-attr]  # first() or raise
        else:
            lease = tries.another()
        if lease is None:
            return False
        self.launched += 1
        task = asyncio.ensure_future(_attempt(self._fn, lease.server, self._timeout))
        self.running[task] = (lease, self.launched)
        return True

    def hedge(self) -> bool:
        """Start one more attempt if the budget has a token for it; False if none went out."""
        budget = self._tries.budget
        if not budget.withdraw(hedge=True):
            self.refused = True
            return False
        if self.launch():
            return True
        budget.refund(hedge=True)
        return False

    def collect(self, done: set[asyncio.Task[_Answer[T]]]) -> list[_Judged[T]]:
        """Judge every finished attempt, in attempt order. If anything raises, every one of
        their leases ends with no outcome and their results are discarded."""
        finished = sorted(((self.running.pop(t), t) for t in done), key=lambda f: f[0][1])
        judged: list[_Judged[T]] = []
        try:
            for (lease, number), task in finished:
                result, error = task.result()  # an attempt cancelled on its own raises here
                verdict = self._tries.judge(lease, number, result, error)
                judged.append(_Judged(lease, number, result, error, verdict))
        except BaseException:
            for entry in judged:
                entry.lease.release(ok=None)
                if entry.error is None:
                    self._tries.discard(entry.result)
            for index, ((lease, _), task) in enumerate(finished[len(judged) :]):
                lease.release(ok=None)  # a no-op for the one the classifier failed on
                if index:  # not judged yet: their results are freed as they are read
                    self._discard_when_done(task)
            raise
        return judged

    def abandon(self) -> None:
        """Cancel what still runs, ending each lease with no outcome (a lost race teaches
        nothing), without waiting for the attempts to unwind."""
        running, self.running = self.running, {}
        for task, (lease, _) in running.items():
            lease.release(ok=None)  # reads no clock, so it cannot fail half-way
            task.cancel()
            _abandoned.add(task)
            self._discard_when_done(task)

    def _discard_when_done(self, task: asyncio.Task[_Answer[T]]) -> None:
        discard = self._tries.discard

        def done(task: asyncio.Task[_Answer[T]]) -> None:
            _abandoned.discard(task)
            if task.cancelled():
                return
            if task.exception() is not None:
                _log.debug("an abandoned attempt ended with %r", task.exception())
                return
            result, error = task.result()
            if error is None:
                discard(result)  # an answer that came too late: nobody will read it

        task.add_done_callback(done)


async def _hedged(
    tries: Tries[T],
    fn: Callable[[str], Awaitable[T]],
    timeout: float | None,
    hedging: HedgingPolicy,
    results: AsyncResults[T] | None,
) -> Held[T]:
    """Attempts side by side: another whenever ``hedging.delay`` passes with no answer."""
    flight = _Flight(tries, fn, timeout)
    loop = asyncio.get_running_loop()
    flight.launch()
    next_hedge: float | None = loop.time() + hedging.delay
    last: _Judged[T] | None = None  # the latest retryable failure: the answer if none wins
    try:
        while flight.running:
            wait = None
            if next_hedge is not None and flight.launched < hedging.attempts:
                wait = max(next_hedge - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                flight.running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the hedging delay passed with no answer: one more, elsewhere
                next_hedge = loop.time() + hedging.delay
                if not flight.hedge():
                    next_hedge = None  # no token or no server: wait for those in flight
                continue
            judged = flight.collect(done)
            done.clear()  # judged: the tasks, holding their results, are no longer needed
            winner = next((entry for entry in judged if not entry.verdict.retry), None)
            for entry in judged:  # every lease but the winner's ends now
                if entry is not winner:
                    entry.lease.release(entry.verdict.ok)
            if winner is not None:
                for loser in (*judged, last):
                    if loser is not None and loser is not winner and loser.error is None:
                        tries.discard(loser.result)
                last = None
                return tries.answer(winner.lease, *winner.taken())
            for replaced in (*judged[:-1], last):
                if replaced is not None and replaced.error is None:
                    tries.discard(replaced.result)
            last = None
            candidate = judged[-1]
            if results is not None and candidate.error is None:
                candidate.result = await results.set_aside(candidate.result)  # type: ignore[arg-type]
            last = candidate
            for _ in judged:  # gRPC A6: each retryable failure sends the next hedge at once
                if flight.launched < hedging.attempts and flight.hedge():
                    next_hedge = loop.time() + hedging.delay
        assert last is not None  # the loop only ends after judging an attempt
        if last.error is not None and flight.refused:
            note_budget(last.error)
        answer, last = last, None
        return tries.answer(None, *answer.taken())
    finally:
        flight.abandon()
        if last is not None and last.error is None:
            tries.discard(last.result)  # interrupted while holding a set-aside answer


async def acall(
    acquire: Acquire,
    budget: RetryBudget,
    fn: Callable[[str], Awaitable[T]],
    *,
    key: Key | None,
    policy: RetryPolicy,
    hedging: HedgingPolicy | None,
    classify: Classifier[T],
    results: AsyncResults[T] | None = None,
    first: FirstAttempt[T] | None = None,
) -> Held[T]:
    """Await ``fn(server)`` with retries or hedging; see ``LoadBalancer.acall``."""
    tries = Tries(acquire, budget, key, policy, classify, results, deposit=first is None)
    if first is not None:
        return await _one_by_one(tries, fn, policy.per_try_timeout, results, first)
    if hedging is None:
        return await _one_by_one(tries, fn, policy.per_try_timeout, results)
    return await _hedged(tries, fn, policy.per_try_timeout, hedging, results)
