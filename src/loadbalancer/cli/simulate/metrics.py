"""Summaries of raw counts: percentiles, shares, key stickiness."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .results import LatencySummary

__all__ = ["percentile", "shares", "stickiness", "summarize_latency"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``ordered`` (sorted ascending), 0.0 if empty.

    Nearest rank returns a latency some request really had, never an interpolation.
    """
    if not ordered:
        return 0.0
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize_latency(latencies: list[float]) -> LatencySummary:
    """Mean, p50, p90, p99 and max of ``latencies``, which this sorts in place."""
    if not latencies:
        return LatencySummary(0.0, 0.0, 0.0, 0.0, 0.0)
    latencies.sort()
    return LatencySummary(
        math.fsum(latencies) / len(latencies),
        percentile(latencies, 50),
        percentile(latencies, 90),
        percentile(latencies, 99),
        latencies[-1],
    )


def shares(counts: Sequence[int]) -> tuple[float, ...]:
    """Each count as a fraction of their total (all zero when the total is)."""
    total = sum(counts)
    return tuple(c / total if total else 0.0 for c in counts)


def stickiness(counts: Sequence[int], servers: int) -> float | None:
    """Fraction of requests that went to their key's most frequent server.

    ``counts`` is a flat key-major table: ``counts[key * servers + server]``. None when no
    request carried a key.
    """
    total = sum(counts)
    if not total:
        return None
    most = sum(max(counts[start : start + servers]) for start in range(0, len(counts), servers))
    return most / total
