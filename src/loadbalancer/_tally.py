"""The pool-wide counts that metrics need and no request pays for: kept from health events
and membership changes, which happen under the balancer's lock, never per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import final

from ._events import EJECTION_REASONS, HealthEvent, HealthEventKind
from ._snapshot import Endpoint

__all__ = ["Tally"]

_EJECTED = HealthEventKind.EJECTED
_PANIC = HealthEventKind.PANIC
_VERDICTS = (HealthEventKind.HEALTHY, HealthEventKind.UNHEALTHY)


@final
class Tally:
    """Ejections by reason, panics, health verdict changes and membership changes.

    Every method runs under the balancer's lock, so plain counters are exact.
    """

    __slots__ = (
        "ejections",
        "health_changes",
        "membership_changed_at",
        "membership_changes",
        "panics",
    )

    def __init__(self) -> None:
        self.ejections = dict.fromkeys(EJECTION_REASONS, 0)
        self.health_changes = {kind.value: 0 for kind in _VERDICTS}
        self.panics = 0
        self.membership_changes = 0
        self.membership_changed_at: float | None = None

    def count(self, events: Iterable[HealthEvent], endpoints: Mapping[str, Endpoint]) -> None:
        """Count ``events``, just published over ``endpoints``."""
        for event in events:
            kind = event.kind
            if kind is _EJECTED:
                if event.reason is not None:
                    self.ejections[event.reason] += 1
                endpoint = endpoints.get(event.server or "")
                if endpoint is not None:
                    endpoint.ejected_total += 1
            elif kind is _PANIC:
                self.panics += 1
            elif kind in _VERDICTS:
                self.health_changes[kind.value] += 1

    def membership_changed(self, now: float) -> None:
        """Count one change of the pool's servers or weights, made at clock time ``now``."""
        self.membership_changes += 1
        self.membership_changed_at = now
