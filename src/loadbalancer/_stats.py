"""Frozen statistics returned by ``LoadBalancer.stats``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._snapshot import Endpoint

__all__ = ["ServerStats"]


@final
@dataclass(frozen=True, slots=True)
class ServerStats:
    """One server's counters at the moment ``stats()`` read them.

    ``picks`` counts leases started on the server (``acquire``/``lease``); a plain ``get()`` is
    not tracked. ``successes`` and ``failures`` count released leases and ``done()`` reports;
    ``cancelled`` counts leases that ended with no outcome (cancelled, abandoned, lost hedges).
    ``latency_ewma`` is the peak-sensitive moving average of latency in seconds, or ``None``
    before the first sample.

    Health: ``healthy`` is the active checks' verdict; ``ejected_until`` the clock time an
    outlier ejection ends (None when not ejected); ``ejections`` how many times it has been
    ejected, less what probation has forgiven; ``eligible`` whether picks may return it now;
    ``effective_weight`` the weight picks use (lower during slow start), None if ineligible.
    """

    server: str
    weight: float
    in_flight: int
    picks: int
    successes: int
    failures: int
    cancelled: int
    latency_ewma: float | None
    consecutive_failures: int
    healthy: bool
    ejected_until: float | None
    ejections: int
    eligible: bool
    effective_weight: float | None

    @property
    def ejected(self) -> bool:
        """Whether an outlier ejection is in force."""
        return self.ejected_until is not None

    @classmethod
    def of(cls, endpoint: Endpoint, effective_weight: float | None) -> ServerStats:
        """Read ``endpoint``'s counters consistently, under its lock."""
        with endpoint._lock:
            return cls(
                endpoint.server,
                endpoint.weight,
                endpoint.in_flight,
                endpoint.picks,
                endpoint.successes,
                endpoint.failures,
                endpoint.cancelled,
                endpoint.latency,
                endpoint.consecutive_failures,
                endpoint.healthy,
                endpoint.ejected_until,
                endpoint.ejections,
                effective_weight is not None,
                effective_weight,
            )
