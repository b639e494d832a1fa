"""Prometheus export: ``LoadBalancerCollector``, a custom collector over named balancers.

Nothing is registered anywhere by this module: register the collector on the registry you
serve, once (``registry.register(collector)``). A library that registered on the global
registry would clash as soon as two balancers, or two copies of a service, shared a process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from loadbalancer import DEFAULT_LATENCY_BUCKETS, LatencyHistogram, LoadBalancer
from loadbalancer._stats import check_buckets
from loadbalancer.metrics import METRICS, Metric
from loadbalancer.metrics._catalog import Sample
from loadbalancer.metrics._names import check_addition

__all__ = ["LoadBalancerCollector"]

_log = logging.getLogger("loadbalancer.metrics")

# prometheus_client appends a family's unit to its name unless the name already ends with it;
# the catalog's names of unit "s" end in "_seconds", so passing the unit changes no name and
# gives OpenMetrics scrapes their "# UNIT" line (the classic text format has none). Other
# units (UCUM "1", "{request}") have no Prometheus spelling, so they are left out.
_UNITS = {"s": "seconds"}

# prometheus_client's own spelling of a bucket bound ("0.25", "1.0", "+Inf"); it is untyped.
_bound: Callable[[float], str] = floatToGoString

# One balancer's series for one scrape: per metric in METRICS (same order), its samples.
_Reading = list[list[Sample]]


def _family(metric: Metric) -> Family:
    """The empty family ``metric`` is exported as: what describe() yields, and collect() fills."""
    labels = ("balancer", *metric.labels)
    # CounterMetricFamily adds "_total" to its samples: given without it, they are named
    # exactly metric.name.
    name = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
    unit = _UNITS.get(metric.unit, "")
    if not name.endswith(f"_{unit}"):
        unit = ""  # passing it would rename the metric: the catalog's name wins
    if metric.kind == "counter":
        return CounterMetricFamily(name, metric.help, labels=labels, unit=unit)
    if metric.kind == "histogram":
        return HistogramMetricFamily(name, metric.help, labels=labels, unit=unit)
    # gauge, and updown: Prometheus has no up-down counter; a gauge is its reading.
    return GaugeMetricFamily(name, metric.help, labels=labels, unit=unit)


def _add(family: Family, labels: list[str], value: float | LatencyHistogram) -> None:
    """Add one series to ``family``, which ``_family`` built for the series' metric."""
    if isinstance(family, HistogramMetricFamily) and isinstance(value, LatencyHistogram):
        buckets = [(_bound(bound), float(n)) for bound, n in value.cumulative()]
        family.add_metric(labels, buckets, value.sum)
    elif isinstance(family, (CounterMetricFamily, GaugeMetricFamily)) and not isinstance(
        value, LatencyHistogram
    ):
        family.add_metric(labels, value)
    else:  # a catalog entry whose kind and readings disagree: a bug to name, not to export
        raise TypeError(f"{family.name}: a {family.type} cannot hold {type(value).__name__}")


class LoadBalancerCollector(Collector):
    """A Prometheus collector of ``lb.stats()`` for named balancers, each series labelled
    ``balancer="<name>"``; the metrics are ``loadbalancer.metrics.METRICS``.

    With ``latency_buckets`` (the default: ``DEFAULT_LATENCY_BUCKETS``), each balancer added
    has its latency histogram enabled in those buckets; with None, a balancer is left as it is,
    and its histogram is exported only if it already counts one (the EWMA gauge always is).
    """

    def __init__(
        self,
        balancers: Mapping[str, LoadBalancer] | None = None,
        *,
        latency_buckets: Iterable[float] | None = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        if balancers is not None and not isinstance(balancers, Mapping):
            raise TypeError(
                f"balancers must be a mapping of names to LoadBalancer, or None, "
                f"not {type(balancers).__name__}"
            )
        # Checked and frozen once: an iterator would be spent by the first add().
        self._buckets = (
            None if latency_buckets is None else check_buckets(latency_buckets, "latency_buckets")
        )
        self._lock = threading.Lock()
        self._balancers: dict[str, LoadBalancer] = {}
        for name, lb in (balancers or {}).items():
            self.add(name, lb)

    def add(self, name: str, lb: LoadBalancer) -> None:
        """Export ``lb`` under ``balancer="<name>"`` from the next scrape on."""
        with self._lock:  # the checks and the insertion as one step against concurrent adds
            check_addition(name, lb, self._balancers, "collected")
            if self._buckets is not None:
                # Raises ValueError if lb already counts other buckets; nothing is added then.
                lb.enable_latency_histogram(self._buckets)
            self._balancers[name] = lb

    def remove(self, name: str) -> bool:
        """Stop exporting the balancer added as ``name`` (its series vanish from the next
        scrape); False if there is none."""
        with self._lock:
            return self._balancers.pop(name, None) is not None

    def describe(self) -> Iterator[Family]:
        """One empty family per metric, so registering checks names without a scrape."""
        for metric in METRICS:
            yield _family(metric)

    def collect(self) -> Iterator[Family]:
        """Every metric's family, with each balancer's series from one ``stats()`` read."""
        with self._lock:  # a copy: stats() runs outside the lock, so add/remove never wait
            balancers = list(self._balancers.items())
        readings: list[tuple[str, _Reading]] = []
        for name, lb in balancers:
            try:
                stats = lb.stats()
                # Read every metric now, so a balancer that fails is left out whole rather
                # than from some families only.
                readings.append((name, [list(metric.read(stats)) for metric in METRICS]))
            except Exception:  # one broken balancer must not blank the others' scrape
                _log.exception("metrics: balancer %r left out of this scrape", name)
        for i, metric in enumerate(METRICS):
            family = _family(metric)  # even with no series: describe() promised it
            for name, reading in readings:
                for values, value in reading[i]:
                    _add(family, [name, *values], value)
            yield family
