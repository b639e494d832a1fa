"""Health events: what the balancer reports through ``on_event`` and ``logging``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

__all__ = ["HealthEvent", "HealthEventKind"]


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
    healthy servers.
    """

    kind: HealthEventKind
    server: str | None
    at: float
    detail: str
