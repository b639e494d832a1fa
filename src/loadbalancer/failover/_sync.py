"""The blocking failover engine: attempts on servers not yet tried, within a retry budget."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

from .._errors import NoServersAvailableError
from .._lease import Lease
from ..strategies._base import Key
from ._budget import RetryBudget
from ._policy import Attempt, Classifier, RetryPolicy, Verdict, check_classifier_verdict

__all__ = ["Acquire", "call", "judge"]

T = TypeVar("T")


class Acquire(Protocol):
    """``LoadBalancer.acquire``: what the engine needs from a balancer."""

    def __call__(self, key: Key | None = None, exclude: Collection[str] = ()) -> Lease:
        """Lease a server for ``key``, avoiding ``exclude`` when any other remains."""
        ...


def judge(lease: Lease, classify: Classifier[T], attempt: Attempt[T]) -> Verdict:
    """Classify ``attempt`` and release its lease with the verdict's outcome.

    If the classifier raises (or returns something else), the lease ends with no outcome and
    the error goes to the caller: a broken classifier must not leave a request in flight.
    """
    try:
        verdict = check_classifier_verdict(classify(attempt))
    except BaseException:
        lease.release(ok=None)
        raise
    lease.release(ok=verdict.ok)
    return verdict


def call(
    acquire: Acquire,
    budget: RetryBudget,
    fn: Callable[[str], T],
    *,
    key: Key | None,
    policy: RetryPolicy,
    classify: Classifier[T],
    sleep: Callable[[float], object],
) -> T:
    """Run ``fn(server)`` until an attempt is not a retryable failure, or retries run out.

    See ``LoadBalancer.call``.
    """
    budget.deposit()
    tried: list[str] = []
    lease = acquire(key)
    number = 1
    while True:
        try:
            result: T | None = fn(lease.server)
            error: Exception | None = None
        except Exception as exc:
            result, error = None, exc
        except BaseException:
            lease.release(ok=None)  # the caller went away: nothing learnt about the server
            raise
        verdict = judge(lease, classify, Attempt(lease.server, number, result, error))
        delay = policy.delay(number, verdict) if verdict.retry else None
        if delay is not None and number < policy.attempts and budget.withdraw():
            tried.append(lease.server)
            try:
                sleep(delay)
                lease = acquire(key, tried)
            except NoServersAvailableError:
                budget.refund()  # every server went away meanwhile: this attempt is the answer
            except BaseException:
                budget.refund()  # interrupted while waiting: the retry never went out
                raise
            else:
                number += 1
                continue
        if error is not None:
            raise error
        return result  # type: ignore[return-value]  # no error: fn returned a T
