"""Frozen statistics returned by ``LoadBalancer.stats``: per server, and for the pool."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Protocol, final

from ._snapshot import Endpoint
from ._validation import check_number
from .failover._budget import RetryBudgetStats

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "BalancerStats",
    "DiscoveryReporter",
    "DiscoveryStatus",
    "LatencyHistogram",
    "ServerStats",
    "check_buckets",
]

DEFAULT_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
)
"""Latency histogram bounds in seconds: the ones OpenTelemetry's HTTP semantic conventions
advise for ``http.client.request.duration``, so the two exports line up."""


def check_buckets(buckets: object, name: str = "buckets") -> tuple[float, ...]:
    """``buckets`` as a tuple of floats if it is a non-empty, increasing sequence of finite
    positive numbers of seconds; otherwise raise ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Iterable):
        raise TypeError(f"{name} must be a sequence of numbers, not {type(buckets).__name__}")
    bounds = tuple(check_number(b, f"{name}[]", above=0) for b in buckets)
    if not bounds:
        raise ValueError(f"{name} must hold at least one bound")
    if any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"{name} must be strictly increasing, got {list(bounds)}")
    return bounds


@final
@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """One server's latency samples in buckets, as Prometheus histograms count them.

    ``counts[i]`` is the number of samples at most ``bounds[i]`` seconds and above the bound
    before it; the last count is the samples above every bound. ``sum`` is their total in
    seconds. Successes and failures are sampled as measured; no-outcome leases are not.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """The number of samples."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, samples at most that)`` per bucket, ending with ``(inf, count)``."""
        return list(zip((*self.bounds, math.inf), accumulate(self.counts), strict=True))


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
    outlier ejection ends (None when not ejected), and ``ejection_ends_in`` the seconds until
    then; ``ejections`` how many times it has been ejected, less what probation has forgiven
    (what the next ejection's length counts from), and ``ejections_total`` every ejection
    since it was registered; ``eligible`` whether picks may return it now;
    ``effective_weight`` the weight picks use (lower during slow start), None if ineligible.
    ``latency_histogram`` holds its latencies in buckets once
    ``LoadBalancer.enable_latency_histogram`` has been called, else None.
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
    ejection_ends_in: float | None = None
    ejections_total: int = 0
    latency_histogram: LatencyHistogram | None = None

    @property
    def ejected(self) -> bool:
        """Whether an outlier ejection is in force."""
        return self.ejected_until is not None

    @classmethod
    def of(
        cls,
        endpoint: Endpoint,
        effective_weight: float | None,
        now: float,
        health: tuple[bool, float | None] = (True, None),
    ) -> ServerStats:
        """Read ``endpoint``'s counters consistently, under its lock, at clock time ``now``;
        ``health`` is its verdict and ejection deadline as the published picker has them."""
        healthy, until = health
        with endpoint._lock:
            histogram = endpoint.histogram
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
                healthy,
                until,
                endpoint.ejections,
                effective_weight is not None,
                effective_weight,
                None if until is None else max(until - now, 0.0),
                endpoint.ejected_total,
                None
                if histogram is None
                else LatencyHistogram(histogram.bounds, tuple(histogram.counts), histogram.sum),
            )


@final
@dataclass(frozen=True, slots=True)
class DiscoveryStatus:
    """A discovery runner's state at one moment.

    ``updates`` counts memberships applied, ``refused`` those refused (more servers than the
    balancer holds), ``failures`` the watch failures in a row now (0 while the source is
    healthy); ``last_update_age`` is the seconds since a membership was last applied (None
    before the first), and ``last_error`` the latest failure, as text.
    """

    source: str
    running: bool
    servers: int
    updates: int
    refused: int
    failures: int
    last_update_age: float | None
    last_error: str | None


class DiscoveryReporter(Protocol):
    """What ``LoadBalancer.attach_discovery`` takes: a runner that can say how it is doing."""

    @property
    def status(self) -> DiscoveryStatus:
        """The runner's state now."""
        ...


@final
class BalancerStats(dict[str, ServerStats]):
    """What ``LoadBalancer.stats()`` returns: a dict of each server's ``ServerStats`` by name,
    in registration order, as it always was, with the pool's own figures as attributes.

    * Membership: ``size`` servers registered, ``healthy`` of them passing active checks and
      not ejected, ``eligible`` those picks may return now (all of them in panic);
      ``membership_changes`` counts the calls that changed the servers or their weights
      (``register``, ``unregister``, ``set_weight``, and a ``replace`` that added, removed or
      reweighted any: one change however many servers it touched; a new order alone is
      none), and ``membership_change_age`` is the seconds since the last (None before one).
    * Panic: ``panic`` whether the pool is in panic mode now, ``panics`` how many times it
      entered it.
    * Outlier detection: ``ejections_active`` servers ejected now; ``ejections_total`` every
      ejection, by reason (each of ``EJECTION_REASONS``, 0 included).
    * Active checks: ``health_changes`` counts verdicts that changed a server's health, by
      the new verdict (``"healthy"``, ``"unhealthy"``).
    * ``retry_budget``: the failover engine's requests, retries, hedges and rejections (a
      budget shared by several balancers shows the same figures in each).
    * ``discovery``: the status of each discovery runner feeding the balancer.

    Health figures are those of the published picker, so they agree with what picks do. Only
    leases and reported outcomes are counted: a plain ``get()`` whose outcome is never
    reported with ``done()`` appears nowhere. The attributes are read-only; equality, like a
    dict's, compares the servers' stats only.
    """

    __slots__ = (
        "discovery",
        "ejections_active",
        "ejections_total",
        "eligible",
        "health_changes",
        "healthy",
        "membership_change_age",
        "membership_changes",
        "panic",
        "panics",
        "retry_budget",
        "size",
    )

    size: int
    healthy: int
    eligible: int
    panic: bool
    panics: int
    ejections_active: int
    ejections_total: Mapping[str, int]
    health_changes: Mapping[str, int]
    membership_changes: int
    membership_change_age: float | None
    retry_budget: RetryBudgetStats
    discovery: tuple[DiscoveryStatus, ...]

    def __init__(
        self,
        servers: Mapping[str, ServerStats],
        *,
        eligible: int,
        panic: bool,
        panics: int,
        ejections_total: Mapping[str, int],
        health_changes: Mapping[str, int],
        membership_changes: int,
        membership_change_age: float | None,
        retry_budget: RetryBudgetStats,
        discovery: tuple[DiscoveryStatus, ...],
    ) -> None:
        super().__init__(servers)
        values = servers.values()
        fields = {
            "size": len(servers),
            "healthy": sum(1 for s in values if s.healthy and s.ejected_until is None),
            "eligible": eligible,
            "panic": panic,
            "panics": panics,
            "ejections_active": sum(1 for s in values if s.ejected_until is not None),
            "ejections_total": dict(ejections_total),  # copies: changing them changes nothing
            "health_changes": dict(health_changes),
            "membership_changes": membership_changes,
            "membership_change_age": membership_change_age,
            "retry_budget": retry_budget,
            "discovery": discovery,
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BalancerStats is read-only: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BalancerStats is read-only: {name} cannot be deleted")

    def __reduce__(self) -> tuple[object, ...]:
        # For pickle and copy, which would otherwise restore the attributes by setting them.
        return (_restore, (dict(self), {name: getattr(self, name) for name in self.__slots__}))


def _restore(servers: dict[str, ServerStats], fields: dict[str, object]) -> BalancerStats:
    """A ``BalancerStats`` rebuilt from its parts, for ``BalancerStats.__reduce__``."""
    stats = BalancerStats.__new__(BalancerStats)
    dict.update(stats, servers)
    for name, value in fields.items():
        object.__setattr__(stats, name, value)
    return stats
