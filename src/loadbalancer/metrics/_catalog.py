"""The one list of metrics: names, meanings, labels, and how each is read from ``lb.stats()``.

Both exporters (Prometheus, OpenTelemetry) and the README's table come from ``METRICS``, so
a metric added here appears everywhere, and nowhere else can a name drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, final

from .._stats import BalancerStats, LatencyHistogram

__all__ = ["LABEL_ATTRIBUTES", "METRICS", "Metric", "Sample"]

Sample = tuple[tuple[str, ...], "float | LatencyHistogram"]
"""One series' label values (after the balancer's name) and its value."""

Kind = Literal["counter", "gauge", "updown", "histogram"]

LABEL_ATTRIBUTES = {
    "balancer": "loadbalancer.balancer",
    "server": "loadbalancer.server",
    "outcome": "loadbalancer.outcome",
    "reason": "loadbalancer.ejection.reason",
    "verdict": "loadbalancer.health_check.verdict",
    "source": "loadbalancer.discovery.source",
}
"""Each Prometheus label's OpenTelemetry attribute name."""


@final
@dataclass(frozen=True, slots=True)
class Metric:
    """One metric, as both exporters name and read it.

    ``name`` is the Prometheus name (counters end in ``_total``, times in ``_seconds``);
    ``otel_name`` and ``unit`` (UCUM) the OpenTelemetry instrument's. ``kind``: a
    ``counter`` only grows, a ``gauge`` is a reading, an ``updown`` a count that goes both
    ways (a gauge in Prometheus, an up-down counter in OpenTelemetry), a ``histogram`` the
    latency buckets (Prometheus only: OpenTelemetry has no asynchronous histogram).
    ``labels`` come after ``balancer``, which every series has; ``read`` yields each series
    of one balancer's stats; ``envoy`` is the Envoy statistic it follows, if any.
    """

    name: str
    otel_name: str
    kind: Kind
    unit: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[BalancerStats], Iterable[Sample]]
    envoy: str | None = None


def _per_server(value: Callable[..., float | None]) -> Callable[[BalancerStats], list[Sample]]:
    """A reader of one number per server; a server whose value is None has no series."""

    def read(stats: BalancerStats) -> list[Sample]:
        samples: list[Sample] = []
        for name, server in stats.items():
            number = value(server)
            if number is not None:
                samples.append(((name,), _number(number)))
        return samples

    return read


def _outcomes(stats: BalancerStats) -> list[Sample]:
    return [
        ((name, outcome), count)
        for name, s in stats.items()
        for outcome, count in (
            ("success", s.successes),
            ("failure", s.failures),
            ("none", s.cancelled),
        )
    ]


def _histograms(stats: BalancerStats) -> list[Sample]:
    return [
        ((name,), s.latency_histogram)
        for name, s in stats.items()
        if s.latency_histogram is not None
    ]


def _pool(
    value: Callable[[BalancerStats], float | None],
) -> Callable[[BalancerStats], list[Sample]]:
    """A reader of one number for the whole balancer; None means no series."""

    def read(stats: BalancerStats) -> list[Sample]:
        number = value(stats)
        return [] if number is None else [((), _number(number))]

    return read


def _by(
    counts: Callable[[BalancerStats], dict[str, int]],
) -> Callable[[BalancerStats], list[Sample]]:
    """A reader of one count per key of a mapping (an ejection reason, a verdict)."""

    def read(stats: BalancerStats) -> list[Sample]:
        return [((key,), n) for key, n in counts(stats).items()]

    return read


def _per_source(value: Callable[..., float | None]) -> Callable[[BalancerStats], list[Sample]]:
    """A reader of one number per discovery runner feeding the balancer."""

    def read(stats: BalancerStats) -> list[Sample]:
        samples: list[Sample] = []
        for status in stats.discovery:
            number = value(status)
            if number is not None:
                samples.append(((status.source,), _number(number)))
        return samples

    return read


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float) -> float:
    """``value`` as exported: a count stays an int (OpenTelemetry sends it as one), a flag 0/1."""
    return int(value) if isinstance(value, bool) else value


METRICS: tuple[Metric, ...] = (
    # -- requests, per server ------------------------------------------------------------------
    Metric(
        "loadbalancer_upstream_rq_total",
        "loadbalancer.upstream.requests",
        "counter",
        "{request}",
        "Requests started on the server: leases, each attempt of call() included; not plain get().",
        ("server",),
        _per_server(lambda s: s.picks),
        "upstream_rq_total",
    ),
    Metric(
        "loadbalancer_upstream_rq_active",
        "loadbalancer.upstream.active_requests",
        "updown",
        "{request}",
        "Requests in flight on the server now.",
        ("server",),
        _per_server(lambda s: s.in_flight),
        "upstream_rq_active",
    ),
    Metric(
        "loadbalancer_upstream_rq_completed_total",
        "loadbalancer.upstream.completed_requests",
        "counter",
        "{request}",
        "Requests ended on the server, by outcome: success, failure, or none (cancelled).",
        ("server", "outcome"),
        _outcomes,
        "upstream_rq_completed",
    ),
    Metric(
        "loadbalancer_upstream_rq_time_seconds",
        "loadbalancer.upstream.request.duration",
        "histogram",
        "s",
        "Request latency on the server (successes and failures), once the histogram is enabled.",
        ("server",),
        _histograms,
        "upstream_rq_time",
    ),
    Metric(
        "loadbalancer_upstream_latency_ewma_seconds",
        "loadbalancer.upstream.latency_ewma",
        "gauge",
        "s",
        "The server's peak-sensitive moving average of latency, as latency-aware picks see it "
        "(a failure counts as at least the strategy's failure_latency).",
        ("server",),
        _per_server(lambda s: s.latency_ewma),
    ),
    # -- health, per server ----------------------------------------------------------------------
    Metric(
        "loadbalancer_upstream_healthy",
        "loadbalancer.upstream.healthy",
        "gauge",
        "1",
        "1 if the server passes its active health checks, else 0 (ejected or not: see eligible).",
        ("server",),
        _per_server(lambda s: s.healthy),
    ),
    Metric(
        "loadbalancer_upstream_eligible",
        "loadbalancer.upstream.eligible",
        "gauge",
        "1",
        "1 if picks may return the server now (healthy and not ejected, or panic), else 0.",
        ("server",),
        _per_server(lambda s: s.eligible),
    ),
    Metric(
        "loadbalancer_upstream_weight",
        "loadbalancer.upstream.weight",
        "gauge",
        "1",
        "The server's configured weight.",
        ("server",),
        _per_server(lambda s: s.weight),
    ),
    Metric(
        "loadbalancer_upstream_effective_weight",
        "loadbalancer.upstream.effective_weight",
        "gauge",
        "1",
        "The weight picks use now: lower during slow start; no series while ineligible.",
        ("server",),
        _per_server(lambda s: s.effective_weight),
    ),
    Metric(
        "loadbalancer_upstream_ejections_total",
        "loadbalancer.upstream.ejections",
        "counter",
        "{ejection}",
        "Outlier ejections of the server since it was registered.",
        ("server",),
        _per_server(lambda s: s.ejections_total),
    ),
    Metric(
        "loadbalancer_upstream_ejection_remaining_seconds",
        "loadbalancer.upstream.ejection_remaining",
        "gauge",
        "s",
        "Seconds until the server's outlier ejection ends; no series while it is not ejected.",
        ("server",),
        _per_server(lambda s: s.ejection_ends_in),
    ),
    # -- the pool --------------------------------------------------------------------------------
    Metric(
        "loadbalancer_membership_size",
        "loadbalancer.membership.size",
        "updown",
        "{server}",
        "Servers registered.",
        (),
        _pool(lambda p: p.size),
        "membership_total",
    ),
    Metric(
        "loadbalancer_membership_healthy",
        "loadbalancer.membership.healthy",
        "updown",
        "{server}",
        "Servers passing their active health checks and not ejected.",
        (),
        _pool(lambda p: p.healthy),
        "membership_healthy",
    ),
    Metric(
        "loadbalancer_membership_eligible",
        "loadbalancer.membership.eligible",
        "updown",
        "{server}",
        "Servers picks may return now: the healthy ones, or all of them in panic.",
        (),
        _pool(lambda p: p.eligible),
    ),
    Metric(
        "loadbalancer_membership_change_total",
        "loadbalancer.membership.changes",
        "counter",
        "{change}",
        "Changes to the servers or their weights: registrations, removals, reweights.",
        (),
        _pool(lambda p: p.membership_changes),
        "membership_change",
    ),
    Metric(
        "loadbalancer_membership_change_age_seconds",
        "loadbalancer.membership.change_age",
        "gauge",
        "s",
        "Seconds since the servers or their weights last changed.",
        (),
        _pool(lambda p: p.membership_change_age),
    ),
    Metric(
        "loadbalancer_lb_panic_active",
        "loadbalancer.panic.active",
        "gauge",
        "1",
        "1 while too few servers are healthy and picks use all of them (panic mode), else 0.",
        (),
        _pool(lambda p: p.panic),
        "lb_healthy_panic",
    ),
    Metric(
        "loadbalancer_lb_panic_total",
        "loadbalancer.panic.entered",
        "counter",
        "{panic}",
        "Times the pool entered panic mode.",
        (),
        _pool(lambda p: p.panics),
    ),
    Metric(
        "loadbalancer_outlier_detection_ejections_active",
        "loadbalancer.outlier_detection.ejections_active",
        "updown",
        "{server}",
        "Servers ejected by outlier detection now.",
        (),
        _pool(lambda p: p.ejections_active),
        "outlier_detection.ejections_active",
    ),
    Metric(
        "loadbalancer_outlier_detection_ejections_total",
        "loadbalancer.outlier_detection.ejections",
        "counter",
        "{ejection}",
        "Outlier ejections, by reason: consecutive_failures or failure_percentage.",
        ("reason",),
        _by(lambda p: dict(p.ejections_total)),
        "outlier_detection.ejections_enforced_total",
    ),
    Metric(
        "loadbalancer_health_check_changes_total",
        "loadbalancer.health_check.changes",
        "counter",
        "{change}",
        "Active health-check verdicts that changed a server's health, by the new verdict.",
        ("verdict",),
        _by(lambda p: dict(p.health_changes)),
    ),
    # -- the failover engine ---------------------------------------------------------------------
    Metric(
        "loadbalancer_failover_rq_total",
        "loadbalancer.failover.requests",
        "counter",
        "{request}",
        "Calls made through the failover engine (call, acall, the HTTP integrations).",
        (),
        _pool(lambda p: p.retry_budget.requests),
    ),
    Metric(
        "loadbalancer_upstream_rq_retry_total",
        "loadbalancer.failover.retries",
        "counter",
        "{attempt}",
        "Retries the budget allowed.",
        (),
        _pool(lambda p: p.retry_budget.retries),
        "upstream_rq_retry",
    ),
    Metric(
        "loadbalancer_upstream_rq_hedge_total",
        "loadbalancer.failover.hedges",
        "counter",
        "{attempt}",
        "Hedged attempts the budget allowed.",
        (),
        _pool(lambda p: p.retry_budget.hedges),
    ),
    Metric(
        "loadbalancer_upstream_rq_retry_overflow_total",
        "loadbalancer.failover.budget_rejections",
        "counter",
        "{attempt}",
        "Retries and hedges the retry budget refused.",
        (),
        _pool(lambda p: p.retry_budget.rejected),
        "upstream_rq_retry_overflow",
    ),
    Metric(
        "loadbalancer_retry_budget_balance",
        "loadbalancer.failover.budget_balance",
        "gauge",
        "{attempt}",
        "Extra attempts the retry budget would allow now; no series for an unlimited budget.",
        (),
        _pool(lambda p: _finite(p.retry_budget.balance)),
    ),
    # -- discovery -------------------------------------------------------------------------------
    Metric(
        "loadbalancer_discovery_running",
        "loadbalancer.discovery.running",
        "gauge",
        "1",
        "1 while the discovery runner is following its source, else 0.",
        ("source",),
        _per_source(lambda d: d.running),
    ),
    Metric(
        "loadbalancer_discovery_updates_total",
        "loadbalancer.discovery.updates",
        "counter",
        "{update}",
        "Memberships from the source applied to the balancer.",
        ("source",),
        _per_source(lambda d: d.updates),
    ),
    Metric(
        "loadbalancer_discovery_refused_total",
        "loadbalancer.discovery.refused",
        "counter",
        "{update}",
        "Memberships refused: more servers than the balancer holds.",
        ("source",),
        _per_source(lambda d: d.refused),
    ),
    Metric(
        "loadbalancer_discovery_failures",
        "loadbalancer.discovery.failures",
        "gauge",
        "{failure}",
        "Watch failures in a row now (0 while the source is healthy).",
        ("source",),
        _per_source(lambda d: d.failures),
    ),
    Metric(
        "loadbalancer_discovery_last_update_age_seconds",
        "loadbalancer.discovery.last_update_age",
        "gauge",
        "s",
        "Seconds since the source's last membership was applied: a stale watch shows here.",
        ("source",),
        _per_source(lambda d: d.last_update_age),
    ),
)
