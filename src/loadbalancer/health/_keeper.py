"""The balancer's health bookkeeping: who is eligible, at what weight, and until when.

Every method runs under the balancer's mutation lock; each returns the events it caused,
which the balancer dispatches after releasing the lock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter, is_not
from typing import final

from .._events import HealthEvent, HealthEventKind
from .._snapshot import Endpoint
from .outlier import OutlierDetection
from .slow_start import SlowStart

__all__ = ["HealthKeeper", "Plan"]

_ejected_until = attrgetter("ejected_until")
_healthy = attrgetter("healthy")
_weight = attrgetter("weight")
_is_set = partial(is_not, None)


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """What to pick from at one moment, and when that must be worked out again."""

    eligible: tuple[Endpoint, ...]
    weights: tuple[float, ...]  # effective weights, aligned with eligible
    panic: bool
    healthy: int
    due: float  # the next clock time at which the plan changes by itself
    # The pool's members that are ejected or unhealthy, for the keeper once it adopts the plan.
    unwell: frozenset[Endpoint] = frozenset()


@final
class HealthKeeper:
    """Outlier ejection, active-check verdicts, slow start and the panic threshold."""

    __slots__ = (
        "_outlier",
        "_panic_threshold",
        "_resets",
        "_slow_start",
        "_unwell",
        "_window_end",
        "panic",
    )

    panic: bool  # whether the current plan is in panic mode

    def __init__(
        self,
        outlier: OutlierDetection | None,
        slow_start: SlowStart | None,
        panic_threshold: float,
    ) -> None:
        self._outlier = outlier
        self._slow_start = slow_start
        self._panic_threshold = panic_threshold
        self._window_end: float | None = None
        self.panic = False
        # Ejected or returned servers whose failures in a row are cleared once the plan is
        # adopted: clearing them is the one change a failed build could not roll back.
        self._resets: list[Endpoint] = []
        # Every pool member that is ejected or unhealthy, and maybe some that no longer are
        # or have left the pool (pruned when a plan is adopted): while it is empty, a plan
        # needs no pass over the pool to find who is eligible, so a pool change stays a few
        # C-level copies.
        self._unwell: set[Endpoint] = set()

    @property
    def outlier(self) -> OutlierDetection | None:
        """The outlier-detection settings, or None when it is off."""
        return self._outlier

    def joined(self, endpoint: Endpoint, now: float) -> None:
        """A server was registered: start its slow start."""
        if self._slow_start is not None:
            endpoint.ramp_from = now

    def plan(self, pool: Sequence[Endpoint], now: float) -> Plan:
        """Work out the eligible servers and their effective weights at ``now``."""
        # Nothing is changed here: a plan whose picker fails to build is never adopted.
        unwell = frozenset(e for e in self._unwell if not e.healthy or e.ejected_until is not None)
        if unwell:
            deadlines = list(filter(_is_set, map(_ejected_until, pool)))
            healthy = tuple(e for e in pool if e.healthy and e.ejected_until is None)
            unwell = unwell.intersection(pool)  # those that left the pool are forgotten
        else:
            deadlines = []
            healthy = tuple(pool)
        # Envoy's panic mode: with too few healthy servers, spreading load over all of them
        # beats crushing the few that are left.
        panic = bool(pool) and len(healthy) * 100 < self._panic_threshold * len(pool)
        eligible = tuple(pool) if panic else healthy
        weights = tuple(map(_weight, eligible))
        due = min(deadlines, default=math.inf)
        if self._slow_start is not None:
            weights, ramp_due = self._ramp(eligible, weights, now, self._slow_start)
            due = min(due, ramp_due)
        if self._outlier is not None and self._outlier.failure_percentage is not None:
            if self._window_end is None:
                self._window_end = now + self._outlier.interval
            due = min(due, self._window_end)
        return Plan(eligible, weights, panic, len(healthy), due, unwell)

    @staticmethod
    def _ramp(
        eligible: tuple[Endpoint, ...], weights: tuple[float, ...], now: float, ramp: SlowStart
    ) -> tuple[tuple[float, ...], float]:
        """Scale the weights of servers in slow start; when the next step is due."""
        scaled = list(weights)
        due = math.inf
        for i, endpoint in enumerate(eligible):
            if endpoint.ramp_from is None:
                continue
            factor = ramp.factor(now - endpoint.ramp_from)
            if factor is None:
                endpoint.ramp_from = None  # ramp over: full weight from now on
            else:
                scaled[i] *= factor
                due = min(due, now + ramp.step)
        return tuple(scaled), due

    def adopt(self, plan: Plan, pool_size: int, now: float) -> list[HealthEvent]:
        """Make ``plan`` current (once its picker is built); report entering or leaving panic."""
        for endpoint in self._resets:
            endpoint._reset_failures()
        self._resets.clear()
        self._unwell = set(plan.unwell)
        if plan.panic == self.panic:
            return []
        self.panic = plan.panic
        kind = HealthEventKind.PANIC if plan.panic else HealthEventKind.PANIC_OVER
        detail = f"{plan.healthy} of {pool_size} servers healthy"
        return [HealthEvent(kind, None, now, detail)]

    def eject(
        self, endpoint: Endpoint, pool: Sequence[Endpoint], now: float, why: str, reason: str
    ) -> list[HealthEvent]:
        """Eject ``endpoint`` unless the pool has already ejected all it may.

        ``why`` is the event's detail, ``reason`` its cause from ``EJECTION_REASONS``.
        """
        outlier = self._outlier
        if outlier is None or endpoint.ejected_until is not None:
            return []
        ejected = sum(1 for e in pool if e.ejected_until is not None)
        if ejected >= outlier.max_ejected(len(pool)):
            return []
        endpoint.ejections = outlier.forgiven(endpoint.ejections, now - endpoint.returned_at) + 1
        duration = outlier.ejection_time(endpoint.ejections)
        endpoint.ejected_until = now + duration
        self._unwell.add(endpoint)
        self._resets.append(endpoint)
        detail = f"{why}; ejected for {duration:g} s (ejection {endpoint.ejections})"
        return [HealthEvent(HealthEventKind.EJECTED, endpoint.server, now, detail, reason)]

    def discard(self) -> None:
        """Forget the changes made for a plan that will not be adopted (its build failed)."""
        self._resets.clear()

    def restored(self, endpoint: Endpoint) -> None:
        """``endpoint``'s health was set back by a rollback: it may be unwell again."""
        if not endpoint.healthy or endpoint.ejected_until is not None:
            self._unwell.add(endpoint)

    def rebase(self, pool: Sequence[Endpoint], now: float) -> None:
        """Cap every deadline relative to ``now``: after the clock stepped back, none outlasts
        its own length (an ejection its ejection time, slow start its window)."""
        outlier = self._outlier
        for endpoint in pool:
            until = endpoint.ejected_until
            if outlier is not None and until is not None:
                longest = outlier.ejection_time(max(endpoint.ejections, 1))
                if until - now > longest:
                    endpoint.ejected_until = now + longest
            if endpoint.returned_at > now:
                endpoint.returned_at = now
            if endpoint.ramp_from is not None and endpoint.ramp_from > now:
                endpoint.ramp_from = now
        if outlier is not None and self._window_end is not None:
            self._window_end = min(self._window_end, now + outlier.interval)

    def expire(self, pool: Sequence[Endpoint], now: float) -> list[HealthEvent]:
        """Return servers whose ejection is over; judge the failure-percentage window."""
        self.rebase(pool, now)
        events = []
        for endpoint in pool if self._unwell else ():
            until = endpoint.ejected_until
            if until is not None and until <= now:
                endpoint.ejected_until = None
                endpoint.returned_at = now
                self._resets.append(endpoint)
                self.joined(endpoint, now)
                detail = f"ejection over; on probation after {endpoint.ejections} ejection(s)"
                events.append(HealthEvent(HealthEventKind.RETURNED, endpoint.server, now, detail))
        outlier = self._outlier
        if outlier is not None and self._window_end is not None and now >= self._window_end:
            self._window_end = now + outlier.interval
            for endpoint in pool:
                requests, failures = endpoint._take_window()
                if outlier.fails_percentage(requests, failures):
                    why = f"{failures} of {requests} requests failed in {outlier.interval:g} s"
                    events += self.eject(endpoint, pool, now, why, "failure_percentage")
        return events

    def set_healthy(self, endpoint: Endpoint, healthy: bool, now: float) -> list[HealthEvent]:
        """Record an active-check verdict; a server that recovers starts its slow start."""
        if endpoint.healthy == healthy:
            return []
        endpoint.healthy = healthy
        if healthy:
            self.joined(endpoint, now)
        else:
            self._unwell.add(endpoint)
        kind = HealthEventKind.HEALTHY if healthy else HealthEventKind.UNHEALTHY
        return [HealthEvent(kind, endpoint.server, now, "active health check")]
