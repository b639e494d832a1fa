"""What strategies see: per-server live state and the immutable snapshot of one moment."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from math import exp
from operator import attrgetter
from typing import Protocol, final

from ._locks import acquire_contended

__all__ = ["Endpoint", "Histogram", "Snapshot"]

_server = attrgetter("server")
_weight = attrgetter("weight")


class _Releasable(Protocol):
    released: bool


@final
class Histogram:
    """One server's latency samples, counted in buckets: the live side of ``LatencyHistogram``.

    ``counts[i]`` is the number of samples at most ``bounds[i]`` and above the bound before
    it; the last count is those above every bound. Written under the endpoint's lock.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, latency: float) -> None:
        """Count one sample. Caller holds the endpoint's lock."""
        # bisect_left: a sample equal to a bound belongs to that bound's bucket (Prometheus'
        # buckets are "less than or equal").
        self.counts[bisect_left(self.bounds, latency)] += 1
        self.sum += latency


@final
class Endpoint:
    """One registered server and its live state, shared by every snapshot that contains it.

    Strategies read these attributes without locking (a value may be a moment old); only the
    balancer writes them, under the endpoint's own lock. The object lives for as long as the
    server stays registered, so its state survives changes to the rest of the pool.

    * ``in_flight``: requests acquired and not yet released.
    * ``load``: ``in_flight`` plus ``consecutive_failures``, what the load-aware strategies
      compare: a server that fails fast has few requests in flight, and must not look idle.
    * ``latency``: peak-sensitive, time-decayed average latency in seconds (``None`` before
      the first completed request); a failure counts as at least the strategy's
      ``failure_latency``. ``latency_at`` is the clock reading it was last updated at (at
      first, when the server was registered).
    * ``consecutive_failures``: failed outcomes since the last success.
    * Outcomes: ``successes``, ``failures``, and ``cancelled`` (leases ended with no outcome).
    * Health, written under the balancer's lock: ``healthy`` (the active checks' verdict),
      ``ejected_until`` (clock time, or None), ``ejections`` (how many times, for the next
      ejection's length), ``returned_at`` and ``ramp_from`` (when slow start began, or None).
    * ``ejected_total``: every ejection since it was registered (``ejections`` is less what
      probation forgave), written under the balancer's lock.
    * ``histogram``: its latency samples in buckets, once the balancer's
      ``enable_latency_histogram`` has been called (None before).
    * ``listener``: for pickers that index loads (least connections, bounded loads), so that
      a pick needs no scan. ``None``, or a callable the endpoint calls with itself after every
      change to ``in_flight`` or ``load``, outside the endpoint's lock. It reads the values it
      indexes itself, so calls that race are harmless: the last one sees the final values. It
      must be quick and must not raise. One per endpoint: the picker that sets it owns it,
      and a picker built after it takes it over.
    """

    __slots__ = (
        "_lock",
        "cancelled",
        "consecutive_failures",
        "ejected_total",
        "ejected_until",
        "ejections",
        "failures",
        "healthy",
        "histogram",
        "in_flight",
        "latency",
        "latency_at",
        "listener",
        "load",
        "picks",
        "ramp_from",
        "returned_at",
        "server",
        "successes",
        "weight",
        "window_from",
    )

    def __init__(self, server: str, weight: float = 1, created_at: float = 0.0) -> None:
        self.server = server
        self.weight = weight
        self.in_flight = 0
        self.load = 0
        self.picks = 0
        self.successes = 0
        self.failures = 0
        self.cancelled = 0
        self.latency: float | None = None
        self.latency_at = created_at
        self.consecutive_failures = 0
        # successes and failures when the current failure-percentage window began: the
        # window's counts are the differences, so the lease path counts nothing extra for it.
        self.window_from = (0, 0)
        self.healthy = True
        self.ejected_until: float | None = None
        self.ejections = 0
        self.ejected_total = 0
        self.histogram: Histogram | None = None
        self.returned_at = created_at
        self.ramp_from: float | None = None
        self.listener: Callable[[Endpoint], object] | None = None
        self._lock = threading.Lock()

    # Every write happens under the endpoint's lock, so counts stay exact under any
    # interleaving (no reliance on the GIL making += atomic, which it does not).

    def begin(self) -> None:
        """Count one request in flight: ``Picker.acquire`` calls it for the server it chose."""
        # Explicit acquire/release: a with-statement on a Lock costs twice as much in CPython.
        lock = self._lock
        if not lock.acquire(False):
            acquire_contended(lock)
        self.in_flight += 1
        self.load += 1
        self.picks += 1
        lock.release()
        listener = self.listener
        if listener is not None:
            listener(self)

    def _withdraw(self, lease: _Releasable) -> None:
        """Take back the ``begin`` of a lease whose pick went unused: nothing is counted.

        The failover engine's retry asks for a server not tried yet; when the picker can only
        offer one already tried, that pick was never a request, so it is neither a pick nor
        a cancellation.
        """
        lock = self._lock
        if not lock.acquire(False):
            acquire_contended(lock)
        try:
            if not lease.released:
                lease.released = True
                self.in_flight -= 1
                self.load -= 1
                self.picks -= 1
        finally:
            lock.release()
            listener = self.listener
            if listener is not None:
                listener(self)

    def _complete(
        self,
        lease: _Releasable | None,
        ok: bool | None,
        latency: float | None,
        now: float,
        decay: float,
        failure_latency: float,
    ) -> bool:
        """Record one outcome; with a lease, also end it (once) and count it out of flight.

        ``ok=None`` is no outcome: the request leaves flight and teaches nothing.
        """
        lock = self._lock
        if not lock.acquire(False):
            acquire_contended(lock)
        try:
            if lease is not None:
                if lease.released:
                    return False
                lease.released = True
                self.in_flight -= 1
                self.load -= 1
            if ok is None:
                self.cancelled += 1
                return True
            histogram = self.histogram
            if histogram is not None and latency is not None:
                histogram.observe(latency)  # as measured: the floor below is the estimate's
            if ok:
                self.successes += 1
                self.load -= self.consecutive_failures
                self.consecutive_failures = 0
            else:
                self.failures += 1
                self.consecutive_failures += 1
                self.load += 1
                # A failure never makes a server look faster: a refused connection answers in
                # a millisecond and must not read as the quickest server in the pool. So it
                # counts as at least failure_latency, and never lowers the estimate (taking
                # the estimate again also restarts its decay).
                floor = failure_latency
                if self.latency is not None and self.latency > floor:
                    floor = self.latency
                if latency is None or latency < floor:
                    latency = floor
            if latency is None:
                return True
            # Peak EWMA (Finagle, Linkerd): the estimate decays towards zero while no sample
            # comes, as the latency-aware picker sees it; a sample above that is taken at once,
            # one below is averaged in with a weight that grows with the time since the last.
            previous = self.latency
            if previous is None or latency >= previous:
                self.latency = latency  # no decay can make the estimate exceed previous
            else:
                elapsed = now - self.latency_at
                keep = exp(-elapsed / decay) if elapsed > 0.0 else 1.0
                decayed = previous * keep
                self.latency = latency if latency >= decayed else decayed + latency * (1.0 - keep)
            self.latency_at = now
            return True
        finally:
            lock.release()
            listener = self.listener
            if listener is not None:
                listener(self)

    def _reset_failures(self) -> None:
        with self._lock:  # the lease path counts failures under this lock too
            self.load -= self.consecutive_failures
            self.consecutive_failures = 0
        listener = self.listener
        if listener is not None:
            listener(self)

    def _take_window(self) -> tuple[int, int]:
        """Requests and failures since the last call, for failure-percentage detection."""
        with self._lock:
            successes, failures = self.window_from
            self.window_from = self.successes, self.failures
            failed = self.failures - failures
            return self.successes - successes + failed, failed

    def __repr__(self) -> str:
        return f"Endpoint({self.server!r}, weight={self.weight!r}, in_flight={self.in_flight})"


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The servers eligible for picking at one moment, in registration order; never empty.

    ``weights`` are the configured weights at that moment, aligned with ``servers``;
    ``clock`` is the balancer's clock, for strategies whose picks depend on time.
    """

    endpoints: tuple[Endpoint, ...]
    servers: tuple[str, ...]
    weights: tuple[float, ...]
    clock: Callable[[], float]

    @classmethod
    def of(
        cls,
        endpoints: tuple[Endpoint, ...],
        clock: Callable[[], float],
        weights: tuple[float, ...] | None = None,
        servers: tuple[str, ...] | None = None,
    ) -> Snapshot:
        """A snapshot over ``endpoints``; ``weights`` default to their configured weights.

        ``servers``, if given, must be the endpoints' names in order: a caller that has them
        saves a pass over the endpoints.
        """
        return cls(
            endpoints,
            tuple(map(_server, endpoints)) if servers is None else servers,
            tuple(map(_weight, endpoints)) if weights is None else weights,
            clock,
        )
