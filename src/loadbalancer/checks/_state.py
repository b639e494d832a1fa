"""The rise/fall state machine both checkers share: pure, no threads, no clocks of its own."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import final

__all__ = ["HealthCheckStatus", "RiseFall"]


@final
@dataclass(frozen=True, slots=True)
class HealthCheckStatus:
    """One server's active-check verdict and the run of probe results behind it.

    ``successes`` and ``failures`` count the current run of consecutive results (one of them
    is always 0 once a probe has finished); ``checked_at`` and ``changed_at`` are readings of
    the checker's clock when a result was last recorded and when the verdict last flipped
    (None until then), and ``checked_ago`` and ``changed_ago`` the seconds since, as of the
    ``statuses()`` call that returned it; ``last_failure`` says why the most recent failed
    probe failed.
    """

    healthy: bool
    successes: int = 0
    failures: int = 0
    checked_at: float | None = None
    changed_at: float | None = None
    last_failure: str | None = None
    checked_ago: float | None = None
    changed_ago: float | None = None

    def as_of(self, now: float) -> HealthCheckStatus:
        """This status with ``checked_ago`` and ``changed_ago`` worked out at clock time ``now``."""
        return replace(
            self,
            checked_ago=None if self.checked_at is None else max(now - self.checked_at, 0.0),
            changed_ago=None if self.changed_at is None else max(now - self.changed_at, 0.0),
        )

    def after(
        self, ok: bool, now: float, rise: int, fall: int, failure: str | None = None
    ) -> HealthCheckStatus:
        """The status once one more probe result has come in.

        Consecutive counting, as the issue asks: a result of the other kind restarts the run
        (HAProxy instead walks a counter back one step, so one success amid failures only
        delays the fall). A healthy server falls after ``fall`` failures in a row; an
        unhealthy one rises after ``rise`` successes in a row.
        """
        if ok:
            successes = self.successes + 1
            rises = not self.healthy and successes >= rise
            return replace(
                self,
                healthy=self.healthy or rises,
                successes=successes,
                failures=0,
                checked_at=now,
                changed_at=now if rises else self.changed_at,
            )
        failures = self.failures + 1
        falls = self.healthy and failures >= fall
        return replace(
            self,
            healthy=self.healthy and not falls,
            successes=0,
            failures=failures,
            checked_at=now,
            changed_at=now if falls else self.changed_at,
            last_failure=failure,
        )


@final
class RiseFall:
    """Rise/fall verdicts for a changing set of servers.

    One writer at a time (the checker's round). Readers may read ``statuses`` from any thread:
    every change publishes a new dict by one reference assignment, so a reader sees a
    consistent picture without a lock.
    """

    __slots__ = ("_fall", "_initial", "_rise", "statuses")

    def __init__(self, rise: int, fall: int, initially_healthy: bool) -> None:
        self._rise = rise
        self._fall = fall
        self._initial = HealthCheckStatus(initially_healthy)
        self.statuses: dict[str, HealthCheckStatus] = {}

    def track(self, servers: Iterable[str]) -> tuple[str, ...]:
        """Follow exactly ``servers`` from now on; return those not followed before.

        New servers start with the initial verdict and no history; servers left out are
        forgotten, so one that comes back later starts afresh.
        """
        current = self.statuses
        servers = tuple(servers)
        self.statuses = {s: current.get(s, self._initial) for s in servers}
        return tuple(s for s in servers if s not in current)

    def record(
        self, server: str, ok: bool, now: float, failure: str | None = None
    ) -> tuple[HealthCheckStatus, HealthCheckStatus] | None:
        """Apply one probe result; return the status before and after, None if not followed."""
        before = self.statuses.get(server)
        if before is None:
            return None
        after = before.after(ok, now, self._rise, self._fall, failure)
        self.statuses = {**self.statuses, server: after}
        return before, after
