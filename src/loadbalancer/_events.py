"""Health events: what the balancer reports through ``on_event`` and ``logging``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

__all__ = ["EJECTION_REASONS", "HealthEvent", "HealthEventKind"]


class HealthEventKind(enum.Enum):
    """What happened to a server's eligibility, or to the pool's."""

    EJECTED = "ejected"
    RETURNED = "returned"
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"
    PANIC = "panic"
    PANIC_OVER = "panic_over"


@final
@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One change, at clock time ``at``; ``server`` is None for pool-wide (panic) events.

    ``detail`` says why: the failure count or percentage, the ejection time, the share of
    healthy servers. ``reason`` is the ejection's cause as a fixed name, for counting:
    ``"consecutive_failures"`` or ``"failure_percentage"`` (one of ``EJECTION_REASONS``); None
    for other events.
    """

    kind: HealthEventKind
    server: str | None
    at: float
    detail: str
    reason: str | None = None


EJECTION_REASONS = ("consecutive_failures", "failure_percentage")
"""Why outlier detection ejects a server: the ``reason`` of an ``EJECTED`` event."""
