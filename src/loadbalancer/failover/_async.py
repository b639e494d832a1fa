"""The asyncio failover engine: retries with backoff, per-try timeouts, and hedging.

Imported only by ``LoadBalancer.acall``, so that importing the core never loads asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, final

from .._errors import NoServersAvailableError
from .._lease import Lease
from ..strategies._base import Key
from ._budget import RetryBudget
from ._policy import Attempt, AttemptTimeoutError, Classifier, HedgingPolicy, RetryPolicy
from ._sync import Acquire, judge

__all__ = ["acall"]

T = TypeVar("T")


async def _attempt(
    fn: Callable[[str], Awaitable[T]], server: str, timeout: float | None
) -> tuple[T | None, Exception | None]:
    """One attempt: its result or the Exception it raised (cancellation propagates)."""
    try:
        if timeout is None:
            return await fn(server), None
        try:
            return await asyncio.wait_for(fn(server), timeout), None
        except asyncio.TimeoutError:  # TimeoutError from 3.11; a distinct class before
            return None, AttemptTimeoutError(f"attempt on {server} took over {timeout:g} s")
    except Exception as exc:
        return None, exc


@final
class _Flight(Generic[T]):
    """The attempts of one call that are still running, each with its lease."""

    __slots__ = ("leases", "tried")

    def __init__(self) -> None:
        self.leases: dict[asyncio.Task[tuple[T | None, Exception | None]], tuple[Lease, int]] = {}
        self.tried: list[str] = []

    def launch(
        self,
        acquire: Acquire,
        key: Key | None,
        fn: Callable[[str], Awaitable[T]],
        number: int,
        timeout: float | None,
    ) -> bool:
        """Start attempt ``number`` on a server not tried yet; False if none is left at all."""
        try:
            lease = acquire(key, self.tried) if self.tried else acquire(key)
        except NoServersAvailableError:
            if number == 1:
                raise
            return False
        self.tried.append(lease.server)
        task = asyncio.ensure_future(_attempt(fn, lease.server, timeout))
        self.leases[task] = (lease, number)
        return True

    async def abandon(self) -> None:
        """Cancel what still runs; its leases end with no outcome (a lost race teaches nothing)."""
        if not self.leases:
            return
        for task, (lease, _) in self.leases.items():
            task.cancel()
            lease.release(ok=None)
        tasks = list(self.leases)
        self.leases.clear()
        await asyncio.gather(*tasks, return_exceptions=True)


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
    flight: _Flight[T] = _Flight()
    limit = policy.attempts if hedging is None else hedging.attempts
    timeout = policy.per_try_timeout
    loop = asyncio.get_running_loop()
    launched = 1
    flight.launch(acquire, key, fn, launched, timeout)
    next_hedge = None if hedging is None else loop.time() + hedging.delay
    answer: tuple[T | None, Exception | None] = (None, None)
    try:
        while flight.leases:
            wait = None
            if next_hedge is not None and launched < limit:
                wait = max(next_hedge - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                flight.leases, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the hedging delay passed with no answer: one more, elsewhere
                assert hedging is not None
                assert next_hedge is not None
                next_hedge += hedging.delay
                if budget.withdraw(hedge=True) and flight.launch(
                    acquire, key, fn, launched + 1, timeout
                ):
                    launched += 1
                else:
                    next_hedge = None  # no budget or no server: wait for those in flight
                continue
            for task in done:
                lease, number = flight.leases.pop(task)
                result, error = task.result()
                verdict = judge(lease, classify, Attempt(lease.server, number, result, error))
                answer = (result, error)
                if not verdict.retry:
                    return _give(answer)
                if launched >= limit:
                    continue  # no attempts left: wait for those in flight, if any
                if hedging is not None:
                    # A6: a retryable failure sends the next hedge at once.
                    if budget.withdraw(hedge=True) and flight.launch(
                        acquire, key, fn, launched + 1, timeout
                    ):
                        launched += 1
                        next_hedge = loop.time() + hedging.delay
                elif budget.withdraw():
                    wait_for = verdict.retry_after
                    await asyncio.sleep(policy.backoff(number) if wait_for is None else wait_for)
                    if flight.launch(acquire, key, fn, launched + 1, timeout):
                        launched += 1
        return _give(answer)
    finally:
        await flight.abandon()


def _give(answer: tuple[T | None, Exception | None]) -> T:
    result, error = answer
    if error is not None:
        raise error
    return result  # type: ignore[return-value]  # no error: the attempt returned a T
