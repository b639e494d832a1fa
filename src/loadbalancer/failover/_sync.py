"""The blocking failover engine: attempts on servers not yet tried, within a retry budget.

``Tries`` holds what the blocking and the asyncio engines share: which servers were tried,
when a retry is due and paid for, what the answer is. Each engine only adds its own waiting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar, final

from .._errors import NoServersAvailableError
from .._lease import Lease
from ..strategies._base import Key
from ._budget import RetryBudget
from ._held import AsyncResults, FirstAttempt, Held, Results
from ._policy import Attempt, Classifier, RetryPolicy, Verdict, check_classifier_verdict

__all__ = ["Acquire", "Tries", "call", "lease_another", "note_budget"]

T = TypeVar("T")


class Acquire(Protocol):
    """``LoadBalancer.acquire``: what the engine needs from a balancer."""

    def __call__(self, key: Key | None = None, exclude: Collection[str] = ()) -> Lease:
        """Lease a server for ``key``, avoiding ``exclude`` when any other remains."""
        ...


def lease_another(acquire: Acquire, key: Key | None, tried: list[str]) -> Lease | None:
    """A lease on a server not in ``tried``; None if no such server is left.

    The balancer's ``exclude`` is a preference (it picks an excluded server rather than none),
    but a retry or hedge must go elsewhere, or it only doubles the load of a failing server.
    """
    try:
        lease = acquire(key, tried)
    except NoServersAvailableError:
        return None
    if lease.server in tried:
        lease._withdraw()  # never a request: counted neither as a pick nor as cancelled
        return None
    return lease


def note_budget(error: Exception) -> None:
    """Say on ``error`` (Python 3.11+: ``add_note``) that the budget refused its retry."""
    if sys.version_info >= (3, 11):
        error.add_note("loadbalancer: not retried on another server: the retry budget is exhausted")


@final
class Tries(Generic[T]):
    """One call's attempts: the servers tried, the retries paid for, and the answer."""

    __slots__ = ("_acquire", "_classify", "_key", "_policy", "budget", "number", "results", "tried")

    def __init__(
        self,
        acquire: Acquire,
        budget: RetryBudget,
        key: Key | None,
        policy: RetryPolicy,
        classify: Classifier[T],
        results: Results[T] | AsyncResults[T] | None,
        deposit: bool = True,
    ) -> None:
        self._acquire = acquire
        self.budget = budget
        self._key = key
        self._policy = policy
        self._classify = classify
        self.results = results
        self.number = 1
        self.tried: list[str] = []
        if deposit:  # else the caller deposited, making the first attempt itself
            budget.deposit()

    def first(self) -> Lease:
        """The first attempt's lease (``NoServersAvailableError`` if there is none)."""
        return self._acquire(self._key)

    def another(self) -> Lease | None:
        """A lease on a server not tried yet (a hedge's), added to ``tried``; None if none."""
        lease = lease_another(self._acquire, self._key, self.tried)
        if lease is not None:
            self.tried.append(lease.server)
        return lease

    def judge(
        self, lease: Lease, number: int, result: T | None, error: Exception | None
    ) -> Verdict:
        """The verdict on attempt ``number``. If the classifier raises (or returns something
        else), the lease ends with no outcome, the result is discarded, and the error goes to
        the caller: a broken classifier must not leave a request in flight."""
        try:
            return check_classifier_verdict(
                self._classify(Attempt(lease.server, number, result, error))
            )
        except BaseException:
            lease.release(ok=None)
            if error is None:
                self.discard(result)
            raise

    def retry_delay(self, lease: Lease, verdict: Verdict, error: Exception | None) -> float | None:
        """Seconds to wait before a retry, if one is due and the budget pays for it (the
        attempt's lease then ends); None if this attempt is the answer."""
        delay = self._policy.delay(self.number, verdict) if verdict.retry else None
        if delay is None or self.number >= self._policy.attempts:
            return None
        if not self.budget.withdraw():
            if error is not None:
                note_budget(error)
            return None
        lease.release(verdict.ok)
        self.tried.append(lease.server)
        return delay

    def next_lease(self) -> Lease | None:
        """The retry's lease, on a server not tried yet; None (the token refunded) if none is
        left, and the attempt set aside is the answer."""
        lease = lease_another(self._acquire, self._key, self.tried)
        if lease is None:
            self.budget.refund()
        else:
            self.number += 1
        return lease

    def refund(self) -> None:
        """Give back the token of a retry that never went out (its wait was interrupted)."""
        self.budget.refund()

    def answer(
        self, lease: Lease | None, verdict: Verdict, result: T | None, error: Exception | None
    ) -> Held[T]:
        """The call's answer: ``error`` raised, or ``result`` held by ``lease`` (None: ended)."""
        if error is not None:
            if lease is not None:
                lease.release(verdict.ok)
            try:
                raise error
            finally:
                error = None  # the traceback holds this frame: it must not hold the error
        if lease is not None and self.results is None:
            lease.release(verdict.ok)
            lease = None
        return Held(result, lease, verdict.ok)  # type: ignore[arg-type]  # no error: a T

    def discard(self, result: T | None) -> None:
        """Free a result that will never be the answer."""
        if self.results is not None:
            self.results.discard(result)  # type: ignore[arg-type]  # only results get here


def call(
    acquire: Acquire,
    budget: RetryBudget,
    fn: Callable[[str], T],
    *,
    key: Key | None,
    policy: RetryPolicy,
    classify: Classifier[T],
    sleep: Callable[[float], object],
    results: Results[T] | None = None,
    first: FirstAttempt[T] | None = None,
) -> Held[T]:
    """Run ``fn(server)`` until an attempt is not a retryable failure, or retries run out.

    See ``LoadBalancer.call`` and ``LoadBalancer.call_held``: with ``results``, the answer
    keeps its lease (``Held.lease``); without, it is released at once. From ``first``'s
    verdict on, if the caller made the first attempt.
    """
    tries = Tries(acquire, budget, key, policy, classify, results, deposit=first is None)
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
                try:
                    result = fn(lease.server)
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
                    result = results.set_aside(result)  # type: ignore[arg-type]  # no error: a T
                except BaseException:
                    tries.refund()  # set_aside freed the result, or failed trying
                    raise
            try:
                sleep(delay)
                retry = tries.next_lease()
            except BaseException:
                tries.refund()
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
