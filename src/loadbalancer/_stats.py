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
    not tracked. ``successes`` and ``failures`` count released leases and ``done()`` reports.
    ``latency_ewma`` is the peak-sensitive moving average of latency in seconds, or ``None``
    before the first sample.
    """

    server: str
    weight: float
    in_flight: int
    picks: int
    successes: int
    failures: int
    latency_ewma: float | None

    @classmethod
    def of(cls, endpoint: Endpoint) -> ServerStats:
        """Read ``endpoint``'s counters consistently, under its lock."""
        with endpoint._lock:
            return cls(
                endpoint.server,
                endpoint.weight,
                endpoint.in_flight,
                endpoint.picks,
                endpoint.successes,
                endpoint.failures,
                endpoint.latency,
            )
