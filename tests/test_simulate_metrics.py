"""Percentiles, shares and key stickiness."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer.cli.simulate.metrics import percentile, shares, stickiness, summarize_latency


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0


@given(st.lists(st.floats(0, 1e3), min_size=1), st.floats(0, 100))
def test_percentile_is_a_value_with_at_least_q_percent_at_or_below(
    values: list[float], q: float
) -> None:
    ordered = sorted(values)
    result = percentile(ordered, q)
    assert result in ordered
    at_or_below = sum(v <= result for v in ordered)
    assert at_or_below >= q / 100 * len(ordered) - 1e-9


def test_summarize_latency() -> None:
    summary = summarize_latency([0.3, 0.1, 0.2, 0.4])
    assert summary.mean == pytest.approx(0.25)
    assert (summary.p50, summary.p90, summary.p99, summary.max) == (0.2, 0.4, 0.4, 0.4)
    assert summarize_latency([]).max == 0.0


def test_shares() -> None:
    assert shares([1, 3]) == (0.25, 0.75)
    assert shares([0, 0]) == (0.0, 0.0)


def test_stickiness() -> None:
    # Two keys, three servers: key 0 went 3x to server 1 and once to server 2; key 1 once.
    counts = [0, 3, 1, 1, 0, 0]
    assert stickiness(counts, 3) == pytest.approx(4 / 5)
    assert stickiness([0, 0, 0], 3) is None
    assert stickiness([5, 0, 0, 0, 0, 7], 3) == 1.0


@given(st.lists(st.integers(0, 20), min_size=3, max_size=30).filter(lambda c: len(c) % 3 == 0))
def test_stickiness_is_a_fraction(counts: list[int]) -> None:
    value = stickiness(counts, 3)
    if sum(counts) == 0:
        assert value is None
    else:
        assert value is not None
        assert 1 / 3 - 1e-9 <= value <= 1.0
        assert math.isfinite(value)
