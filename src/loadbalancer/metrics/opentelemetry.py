"""OpenTelemetry instruments over load balancers: ``METRICS`` through ``opentelemetry-api``.

``LoadBalancerInstruments`` creates one asynchronous instrument per metric of
``loadbalancer.metrics.METRICS`` on a ``Meter`` named ``"loadbalancer"`` (with the library's
version), named by each metric's ``otel_name`` and attributed with
``loadbalancer.balancer`` plus the metric's own attributes (``loadbalancer.server``,
``loadbalancer.outcome``, ...). It needs only ``opentelemetry-api``
(``pip install 'loadbalancer[opentelemetry]'``): the instruments are no-ops until the
application installs an SDK ``MeterProvider``, as everything written against the API is.

Latency: the OpenTelemetry API has no asynchronous histogram, so the catalog's latency
histogram (``loadbalancer.upstream.request.duration``, Prometheus only) is not exported
here. The moving average ``loadbalancer.upstream.latency_ewma`` stands in for it, and the HTTP
integrations, given ``meter_provider=``, record ``http.client.request.duration`` for every
attempt, synchronously, as the HTTP client semantic conventions define it.

Wiring, with the SDK (``opentelemetry-sdk``, the application's choice, never this library's)::

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from loadbalancer.metrics.opentelemetry import LoadBalancerInstruments

    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=15_000)
    provider = MeterProvider(metric_readers=[reader])
    instruments = LoadBalancerInstruments({"api": api_lb}, meter_provider=provider)
    instruments.add("cache", cache_lb)

Cost: every balancer's ``stats()`` is read once per collection, not once per instrument. The
first instrument's callback (the SDK calls callbacks in the order the instruments were created)
takes a fresh reading of every balancer and caches it; the other callbacks of that collection
reuse it, and read only a balancer that has no reading yet (just added).

Concurrency: the instruments may be collected by several readers, from several threads, while
balancers are added and removed. Readings are taken one at a time, under a lock, and each
replaces the cache whole, so the cache only ever moves forward in time: a collection that
runs alongside another may report figures from the other's reading, newer than its own first
one, but never older, so no counter goes backwards. Per-collection caches would be exactly
consistent, but they need to know where one collection ends, which the API does not say;
a shared cache that only moves forward is simple and right. ``stats()`` is called outside the
lock that guards the set of balancers, so ``add`` and ``remove`` never wait for a reading.

Failures: a balancer whose ``stats()`` raises is left out of that collection (logged on the
``loadbalancer.metrics`` logger) while the others report; no callback ever raises into the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import final

from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter_provider,
)

import loadbalancer
from loadbalancer import BalancerStats, LatencyHistogram, LoadBalancer

from ._catalog import LABEL_ATTRIBUTES, METRICS, Metric
from ._names import check_addition, check_name

__all__ = ["LoadBalancerInstruments"]

_log = logging.getLogger("loadbalancer.metrics")

_BALANCER = LABEL_ATTRIBUTES["balancer"]

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _check_balancers(balancers: object) -> dict[str, LoadBalancer]:
    """``balancers`` as a new dict, checked: names non-empty str, values distinct balancers."""
    if balancers is None:
        return {}
    if not isinstance(balancers, Mapping):
        raise TypeError(
            f"balancers must be a mapping of names to LoadBalancer, or None, not "
            f"{type(balancers).__name__}"
        )
    checked: dict[str, LoadBalancer] = {}
    for name, lb in balancers.items():
        check_name(name, "balancers' names")
        if not isinstance(lb, LoadBalancer):
            raise TypeError(f"balancers[{name!r}] must be a LoadBalancer, not {type(lb).__name__}")
        for other, known in checked.items():
            if known is lb:
                raise ValueError(f"balancers: the same balancer is named {other!r} and {name!r}")
        checked[name] = lb
    return checked


def _read(name: str, lb: LoadBalancer) -> BalancerStats | None:
    """``lb.stats()``, or None (logged) if it raised: one broken balancer must not hide the rest."""
    try:
        return lb.stats()
    except Exception:
        _log.exception("balancer %r: stats() raised; it is left out of this collection", name)
        return None


@final
class LoadBalancerInstruments:
    """OpenTelemetry asynchronous instruments reporting ``lb.stats()`` of named balancers.

    ``balancers`` maps each balancer's name (the ``loadbalancer.balancer`` attribute) to it;
    more can be added with ``add``. The instruments are created on
    ``meter_provider.get_meter("loadbalancer", loadbalancer.__version__)``, or on the global
    provider's (``opentelemetry.metrics.get_meter_provider()``) when ``meter_provider`` is None.
    They record nothing until the application installs an OpenTelemetry SDK: with the API
    alone every instrument is a no-op. Create one per ``MeterProvider``: a second one on the
    same provider would create the same instruments again.

    The OpenTelemetry API cannot unregister an asynchronous instrument, so ``remove`` and
    ``close`` make the callbacks report nothing for the balancers concerned instead. The
    provider keeps the instruments, and through them this object, alive; ``close`` lets go of
    the balancers. Thread-safe.
    """

    __slots__ = ("__weakref__", "_balancers", "_closed", "_lock", "_read_lock", "_readings")

    def __init__(
        self,
        balancers: Mapping[str, LoadBalancer] | None = None,
        *,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        # Every check comes before the first instrument: a refused call creates nothing.
        if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
            raise TypeError(
                f"meter_provider must be an opentelemetry.metrics.MeterProvider or None, not "
                f"{type(meter_provider).__name__}"
            )
        self._balancers = _check_balancers(balancers)
        # _lock guards _balancers, _readings and _closed, and is held only briefly.
        self._lock = threading.Lock()
        # _read_lock makes readings one at a time, so a later one never lands before an
        # earlier one; taken before _lock, never while holding it.
        self._read_lock = threading.Lock()
        # The latest reading of each balancer, or None if its stats() raised at that reading
        # (so the rest of that collection skips it rather than reading and logging again).
        self._readings: dict[str, BalancerStats | None] = {}
        self._closed = False

        provider = get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("loadbalancer", loadbalancer.__version__)
        creators = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        refresh = True  # the first instrument's callback takes each collection's reading
        for metric in METRICS:
            if metric.kind == "histogram":
                continue  # no asynchronous histogram in the API: see the module's docstring
            creators[metric.kind](
                metric.otel_name,
                callbacks=[self._callback(metric, refresh=refresh)],
                unit=metric.unit,
                description=metric.help,
            )
            refresh = False

    @property
    def balancers(self) -> dict[str, LoadBalancer]:
        """The balancers reported, by name (a copy)."""
        with self._lock:
            return dict(self._balancers)

    def add(self, name: str, lb: LoadBalancer) -> None:
        """Report ``lb`` under ``name`` from the next collection on."""
        with self._lock:
            check_addition(name, lb, self._balancers, "reported")
            if self._closed:
                raise RuntimeError("the instruments are closed: create new ones")
            self._balancers[name] = lb

    def remove(self, name: str) -> bool:
        """Stop reporting the balancer named ``name``; return False if there is none."""
        check_name(name)
        with self._lock:
            self._readings.pop(name, None)
            return self._balancers.pop(name, None) is not None

    def close(self) -> None:
        """Stop reporting every balancer and let go of them; calling it again does nothing."""
        with self._lock:
            self._closed = True
            self._balancers.clear()
            self._readings.clear()

    # -- collection ---------------------------------------------------------------------------

    def _callback(self, metric: Metric, *, refresh: bool) -> Callback:
        """The callback of ``metric``'s instrument; with ``refresh``, it takes a new reading."""
        keys = tuple(LABEL_ATTRIBUTES[label] for label in metric.labels)

        def observe(options: CallbackOptions) -> list[Observation]:
            try:
                readings = self._current(refresh=refresh)
            except Exception:  # a bug here must cost one collection, not the SDK's thread
                _log.exception("%s: could not read the balancers", metric.otel_name)
                return []
            observations: list[Observation] = []
            for name, stats in readings:
                try:
                    observations += _observe(metric, keys, name, stats)
                except Exception:
                    _log.exception("balancer %r: could not read %s", name, metric.otel_name)
            return observations

        return observe

    def _current(self, *, refresh: bool) -> list[tuple[str, BalancerStats]]:
        """Each reported balancer's reading, by name: a new one for every balancer with
        ``refresh``, else the cached one, read now for a balancer that has none."""
        if not refresh:
            with self._lock:
                if all(name in self._readings for name in self._balancers):
                    return self._cached()
        with self._read_lock:
            with self._lock:  # which to read, decided again: another thread may have read
                wanted = {
                    name: lb
                    for name, lb in self._balancers.items()
                    if refresh or name not in self._readings
                }
            # Outside _lock: stats() may take a while (discovery runners report through it),
            # and add/remove must not wait for it.
            fresh = {name: _read(name, lb) for name, lb in wanted.items()}
            with self._lock:
                for name, stats in fresh.items():
                    # A balancer removed (or replaced under its name) meanwhile keeps none.
                    if self._balancers.get(name) is wanted[name]:
                        self._readings[name] = stats
                return self._cached()

    def _cached(self) -> list[tuple[str, BalancerStats]]:
        """The cached readings of the reported balancers, skipping failed ones; under _lock."""
        return [
            (name, stats)
            for name in self._balancers
            if (stats := self._readings.get(name)) is not None
        ]


def _observe(
    metric: Metric, keys: tuple[str, ...], name: str, stats: BalancerStats
) -> list[Observation]:
    """``metric``'s observations of one balancer's ``stats``, attributed with ``keys``."""
    observations = []
    for values, value in metric.read(stats):
        if isinstance(value, LatencyHistogram):
            continue  # histograms are not exported here (and their metric has no instrument)
        attributes = {_BALANCER: name, **dict(zip(keys, values, strict=True))}
        observations.append(Observation(value, attributes))
    return observations
