"""Passive outlier detection: the settings and the arithmetic of ejecting failing servers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

from .._validation import check_number, check_positive_int

__all__ = ["OutlierDetection"]


@final
@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """When to eject a server that fails requests, and for how long (Envoy's defaults).

    Outcomes come from leases and ``done()``. A server is ejected after
    ``consecutive_failures`` failures in a row, or, when ``failure_percentage`` is set, when
    at least that percentage of its requests in one ``interval`` failed (counting only
    intervals with ``minimum_requests`` requests). An ejection lasts ``base_ejection_time``
    times the number of times the server has been ejected, at most ``max_ejection_time``;
    the server then returns on probation: that count falls by one for every
    ``base_ejection_time`` it stays in, so a relapse is ejected for longer. At most
    ``max_ejection_percent`` of the pool is ejected at once, but always at least one server.
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    failure_percentage: float | None = None
    minimum_requests: int = 50
    interval: float = 10.0

    def __post_init__(self) -> None:
        check_positive_int(self.consecutive_failures, "consecutive_failures")
        check_number(self.base_ejection_time, "base_ejection_time", above=0)
        check_number(self.max_ejection_time, "max_ejection_time", at_least=self.base_ejection_time)
        check_number(self.max_ejection_percent, "max_ejection_percent", at_least=0, at_most=100)
        if self.failure_percentage is not None:
            check_number(self.failure_percentage, "failure_percentage", above=0, at_most=100)
        check_positive_int(self.minimum_requests, "minimum_requests")
        check_number(self.interval, "interval", above=0)

    def ejection_time(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection of a server lasts."""
        return min(self.base_ejection_time * ejections, self.max_ejection_time)

    def max_ejected(self, pool_size: int) -> int:
        """How many servers of a pool this size may be ejected at once (at least one)."""
        return max(1, math.floor(pool_size * self.max_ejection_percent / 100))

    def forgiven(self, ejections: int, time_in: float) -> int:
        """The ejection count after ``time_in`` seconds back in the pool on probation."""
        # max: a clock that stepped back must not add ejections.
        return max(0, ejections - math.floor(max(time_in, 0.0) / self.base_ejection_time))

    def fails_percentage(self, requests: int, failures: int) -> bool:
        """Whether one interval's counts call for ejection by failure percentage."""
        if self.failure_percentage is None or requests < self.minimum_requests:
            return False
        return failures * 100 >= self.failure_percentage * requests
