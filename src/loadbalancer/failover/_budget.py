"""The retry budget: retries and hedges stay a fraction of requests, so failures never storm."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import final

from .._validation import check_number

__all__ = ["RetryBudget", "RetryBudgetStats"]


@final
@dataclass(frozen=True, slots=True)
class RetryBudgetStats:
    """A retry budget's counters at one moment.

    ``requests`` counts calls made through the failover engine; ``retries`` and ``hedges`` the
    extra attempts the budget allowed; ``rejected`` those it refused; ``balance`` the extra
    attempts it would allow right now (``inf`` for an unlimited budget).
    """

    ratio: float
    reserve: float
    balance: float
    requests: int
    retries: int
    hedges: int
    rejected: int


@final
class RetryBudget:
    """Extra attempts (retries and hedges) may be at most ``ratio`` of requests, plus a reserve.

    A token bucket (the model of Finagle's ``RetryBudget`` and gRPC A6's retry throttling):
    every request made through the failover engine deposits ``ratio`` tokens (default 0.2),
    every retry or hedge withdraws one, and an extra attempt without a whole token is refused.
    The bucket starts full and holds at most ``reserve`` tokens (default 10), so a client that
    has been quiet can still retry a few times, but tokens saved in calm times never fund a
    storm. However many callers share the balancer, extra attempts never exceed
    ``reserve + ratio x requests``: when every backend fails, attempts stay at most
    ``(1 + ratio) x requests + reserve``.

    One per balancer by default (``LoadBalancer(retry_budget=...)``); pass the same instance to
    several balancers to share one budget among them. Thread-safe; ``stats()`` reads it.
    ``RetryBudget.unlimited()`` refuses nothing and only counts.
    """

    __slots__ = (
        "_balance",
        "_hedges",
        "_lock",
        "_ratio",
        "_rejected",
        "_requests",
        "_reserve",
        "_retries",
    )

    def __init__(self, ratio: float = 0.2, reserve: float = 10) -> None:
        self._ratio = check_number(ratio, "ratio", at_least=0, at_most=1)
        self._reserve = check_number(reserve, "reserve", at_least=1)
        self._balance = self._reserve
        self._requests = 0
        self._retries = 0
        self._hedges = 0
        self._rejected = 0
        self._lock = threading.Lock()

    @classmethod
    def unlimited(cls) -> RetryBudget:
        """A budget that allows every extra attempt and only counts them."""
        budget = cls()
        budget._ratio = budget._reserve = budget._balance = math.inf
        return budget

    @property
    def ratio(self) -> float:
        """Tokens each request deposits: the long-run share of extra attempts."""
        return self._ratio

    @property
    def reserve(self) -> float:
        """The most tokens the bucket holds, and how many it starts with."""
        return self._reserve

    def deposit(self) -> None:
        """Count one request, adding ``ratio`` tokens (up to ``reserve``)."""
        with self._lock:
            self._requests += 1
            balance = self._balance + self._ratio
            self._balance = balance if balance < self._reserve else self._reserve

    def withdraw(self, *, hedge: bool = False) -> bool:
        """Take one token for a retry (or a hedge); False, and counted as rejected, if none."""
        with self._lock:
            if self._balance >= 1.0:
                self._balance -= 1.0
                if hedge:
                    self._hedges += 1
                else:
                    self._retries += 1
                return True
            self._rejected += 1
            return False

    def refund(self, *, hedge: bool = False) -> None:
        """Give back a token whose retry (or hedge) never went out: cancelled, or no server."""
        with self._lock:
            balance = self._balance + 1.0
            self._balance = balance if balance < self._reserve else self._reserve
            if hedge:
                self._hedges -= 1
            else:
                self._retries -= 1

    def stats(self) -> RetryBudgetStats:
        """The budget's counters, read together."""
        with self._lock:
            return RetryBudgetStats(
                self._ratio,
                self._reserve,
                self._balance,
                self._requests,
                self._retries,
                self._hedges,
                self._rejected,
            )

    def __repr__(self) -> str:
        if self._ratio == math.inf:
            return "RetryBudget.unlimited()"
        return f"RetryBudget(ratio={self._ratio:g}, reserve={self._reserve:g})"
