"""What the failover engine is told: how attempts went, and how to retry or hedge them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, final

from .._errors import LoadBalancerError
from .._validation import check_number, check_positive_int

__all__ = [
    "MAX_ATTEMPTS",
    "Attempt",
    "AttemptTimeoutError",
    "Classifier",
    "HedgingPolicy",
    "RetryPolicy",
    "Verdict",
    "check_classifier_verdict",
    "retry_on_exception",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

MAX_ATTEMPTS = 5
"""The most attempts one call may make, the first included (gRPC A6's limit)."""


@final
class AttemptTimeoutError(LoadBalancerError, TimeoutError):
    """An attempt ran past the policy's ``per_try_timeout`` and was cancelled (async calls)."""


@final
@dataclass(frozen=True, slots=True)
class Attempt(Generic[T_co]):
    """One attempt of a call, as the classifier sees it.

    ``number`` counts from 1; ``result`` is what the attempt returned (None if it raised);
    ``error`` the ``Exception`` it raised (``AttemptTimeoutError`` past the per-try timeout).
    """

    server: str
    number: int
    result: T_co | None
    error: Exception | None


@final
@dataclass(frozen=True, slots=True)
class Verdict:
    """How one attempt went: the outcome for its server, and whether another may be tried.

    ``ok`` is recorded on the attempt's server: True a success, False a failure, None no
    outcome (the server told us nothing, say a request refused before it was sent). With
    ``retry``, the engine may try another server, within the policy and the budget; the
    call's answer is otherwise this attempt's (its result returned, its error raised).
    ``retry_after`` is the server's pushback (``Retry-After``, ``grpc-retry-pushback-ms``):
    seconds to wait before the retry instead of the backoff.
    """

    ok: bool | None
    retry: bool = False
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.ok is not None and not isinstance(self.ok, bool):
            raise TypeError(f"ok must be True, False or None, not {type(self.ok).__name__}")
        if not isinstance(self.retry, bool):
            raise TypeError(f"retry must be a bool, not {type(self.retry).__name__}")
        if self.retry_after is not None:
            check_number(self.retry_after, "retry_after", at_least=0)


Classifier = Callable[[Attempt[T]], Verdict]
"""Decides the ``Verdict`` of each attempt; integrations supply one per protocol."""

_SUCCESS = Verdict(True)
_RETRYABLE_FAILURE = Verdict(False, retry=True)


def retry_on_exception(attempt: Attempt[object]) -> Verdict:
    """The default classifier: a return is a success; any ``Exception`` a retryable failure."""
    return _SUCCESS if attempt.error is None else _RETRYABLE_FAILURE


def check_classifier_verdict(verdict: object) -> Verdict:
    """Return ``verdict`` if the classifier returned a ``Verdict``, else raise saying so."""
    if not isinstance(verdict, Verdict):
        raise TypeError(f"classify must return a Verdict, not {type(verdict).__name__}")
    return verdict


@final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a call may make, how long to wait between them, and per-try limits.

    * ``attempts``: at most this many, the first included (default 2: one retry, as Envoy's
      ``num_retries: 1``; at most ``MAX_ATTEMPTS``). Each retry goes to a server not tried
      yet (``exclude``), and every one needs a token from the balancer's ``RetryBudget``.
    * Backoff before retry ``n`` (from 1) is full jitter: uniform in ``[0, min(backoff_max,
      backoff_base x 2 ** (n - 1))]`` (Envoy: base 25 ms, max 10x base; gRPC A6), drawn from
      ``rng``; a ``Verdict.retry_after`` (server pushback) replaces it.
    * ``max_retry_after``: the longest server pushback obeyed (default 10 s); a server asking
      for a longer wait gets no retry, and the call ends with its answer, so no server can
      park a caller for an hour.
    * ``per_try_timeout``: seconds one attempt may take. Async calls enforce it (the attempt is
      cancelled and classified as an ``AttemptTimeoutError``); a blocking attempt cannot be
      interrupted, so sync integrations pass it to their client as its timeout.
    """

    attempts: int = 2
    backoff_base: float = 0.025
    backoff_max: float | None = None
    max_retry_after: float = 10.0
    per_try_timeout: float | None = None
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.attempts, "attempts")
        if self.attempts > MAX_ATTEMPTS:
            raise ValueError(f"attempts must be at most {MAX_ATTEMPTS}, got {self.attempts}")
        check_number(self.backoff_base, "backoff_base", at_least=0)
        if self.backoff_max is not None:
            check_number(self.backoff_max, "backoff_max", at_least=self.backoff_base)
        check_number(self.max_retry_after, "max_retry_after", at_least=0)
        if self.per_try_timeout is not None:
            check_number(self.per_try_timeout, "per_try_timeout", above=0)
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, not {type(self.rng).__name__}")

    def delay(self, retry: int, verdict: Verdict) -> float | None:
        """Seconds to wait before retry ``retry`` after ``verdict``; None: do not retry."""
        if verdict.retry_after is None:
            return self.backoff(retry)
        return verdict.retry_after if verdict.retry_after <= self.max_retry_after else None

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        cap = 10 * self.backoff_base if self.backoff_max is None else self.backoff_max
        ceiling = min(cap, self.backoff_base * 2.0 ** min(retry - 1, 64))
        rng = self.rng
        return (random.random() if rng is None else rng.random()) * ceiling


@final
@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    """Send the same request to another server if no answer comes within ``delay`` seconds.

    gRPC A6's ``hedgingPolicy``, for idempotent async calls only: the first attempt goes out
    at once, and another every ``delay`` seconds until ``attempts`` (default 2) are in
    flight; an attempt that fails retryably sends the next one at once. The first answer
    that is not a retryable failure wins, and the others are cancelled with no outcome. Every
    hedge needs a token from the balancer's ``RetryBudget``.
    """

    delay: float
    attempts: int = 2

    def __post_init__(self) -> None:
        check_number(self.delay, "delay", at_least=0)
        check_positive_int(self.attempts, "attempts")
        if self.attempts > MAX_ATTEMPTS:
            raise ValueError(f"attempts must be at most {MAX_ATTEMPTS}, got {self.attempts}")
