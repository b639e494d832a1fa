"""The one list of metrics follows Prometheus' and OpenTelemetry's naming rules, and its own."""

from __future__ import annotations

import re
from collections import Counter

from loadbalancer.metrics import METRICS
from loadbalancer.metrics._catalog import LABEL_ATTRIBUTES

# https://prometheus.io/docs/concepts/data_model/#metric-names-and-labels
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# The series names prometheus_client derives from a family, which must not clash either.
SUFFIXES = {"counter": ("_created",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def duplicates(names: list[str]) -> set[str]:
    return {name for name, n in Counter(names).items() if n > 1}


def test_there_are_metrics_of_every_kind() -> None:
    assert {m.kind for m in METRICS} == {"counter", "gauge", "updown", "histogram"}


def test_names_are_unique() -> None:
    assert duplicates([m.name for m in METRICS]) == set()


def test_names_match_prometheus_rules_and_the_library_prefix() -> None:
    assert [m.name for m in METRICS if not METRIC_NAME.fullmatch(m.name)] == []
    assert [m.name for m in METRICS if ":" in m.name] == []  # colons are for recording rules
    assert [m.name for m in METRICS if not m.name.startswith("loadbalancer_")] == []


def test_no_derived_series_name_clashes_with_another_metric() -> None:
    series = []
    for metric in METRICS:
        base = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
        series += [metric.name, *(base + suffix for suffix in SUFFIXES.get(metric.kind, ()))]
    assert duplicates(series) == set()


def test_counters_end_in_total() -> None:
    assert [m.name for m in METRICS if m.kind == "counter" and not m.name.endswith("_total")] == []


def test_nothing_but_counters_ends_in_total() -> None:
    assert [m.name for m in METRICS if m.kind != "counter" and m.name.endswith("_total")] == []


def test_times_are_in_seconds_and_named_so() -> None:
    seconds = [m.name for m in METRICS if m.unit == "s"]
    assert seconds  # the rule below is about something
    assert [n for n in seconds if not n.removesuffix("_total").endswith("_seconds")] == []
    named = [m.name for m in METRICS if m.name.removesuffix("_total").endswith("_seconds")]
    assert named == seconds  # and nothing named in seconds is in another unit
    assert [m.unit for m in METRICS if m.kind == "histogram"] == ["s"]


def test_opentelemetry_names_are_unique_and_prefixed() -> None:
    assert duplicates([m.otel_name for m in METRICS]) == set()
    assert [m.otel_name for m in METRICS if not m.otel_name.startswith("loadbalancer.")] == []
    # OpenTelemetry instrument names: ASCII letter first, then letters, digits, _ . - /
    pattern = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,254}")
    assert [m.otel_name for m in METRICS if not pattern.fullmatch(m.otel_name)] == []


def test_every_label_has_an_attribute_name() -> None:
    labels = {label for m in METRICS for label in m.labels}
    assert labels  # the rule below is about something
    assert labels - set(LABEL_ATTRIBUTES) == set()
    assert [label for label in LABEL_ATTRIBUTES if not LABEL_NAME.fullmatch(label)] == []
    assert [label for label in LABEL_ATTRIBUTES if label.startswith("__")] == []  # reserved
    assert duplicates(list(LABEL_ATTRIBUTES.values())) == set()


def test_labels_are_distinct_and_leave_balancer_to_the_exporters() -> None:
    # Every series gets balancer=<name> first; a metric listing it again would clash.
    assert [m.name for m in METRICS if "balancer" in m.labels] == []
    assert [m.name for m in METRICS if len(set(m.labels)) != len(m.labels)] == []
    # A histogram's le label is prometheus_client's own.
    assert [m.name for m in METRICS if "le" in m.labels] == []


def test_every_help_is_a_sentence() -> None:
    assert [m.name for m in METRICS if not m.help.endswith(".")] == []
    assert [m.name for m in METRICS if not m.help[:1].isupper() and not m.help[:1].isdigit()] == []
    assert [m.name for m in METRICS if "\n" in m.help] == []


def test_envoy_names_are_unique() -> None:
    envoy = [m.envoy for m in METRICS if m.envoy is not None]
    assert envoy  # the issue asks for Envoy's names: some metrics follow one
    assert duplicates(envoy) == set()
