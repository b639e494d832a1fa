"""What one strategy's run counts as it goes, and the ``StrategyResult`` that adds up to."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import final

from ... import HealthEvent, HealthEventKind
from .metrics import percentile, shares, stickiness, summarize_latency
from .results import Ejection, Phase, ServerResult, StrategyResult, Window

__all__ = ["Tally", "window_width"]

_WINDOWS = 40
"""At most this many windows per run: enough to see a strategy react within a second or two
of a change in a run of half a minute, with hundreds of requests in each at the usual rates."""


def window_width(duration: float) -> float:
    """How long each window of a ``duration``-second run is: 1, 2 or 5 times a power of ten.

    The shortest such width that slices the run into at most ``_WINDOWS`` windows; a round
    number, so that window boundaries fall on round times.
    """
    target = duration / _WINDOWS
    power = 10.0 ** math.floor(math.log10(target))
    # Within a rounding error of the target counts as reaching it: 40 s gives 1 s, not 2 s.
    return next(step * power for step in (1, 2, 5, 10) if step * power >= target * (1 - 1e-9))


@final
class Tally:
    """Per-server counters, latencies, key placements, phases, windows and ejections of a run.

    Servers are counted by index into ``servers``. Phases begin at ``phase_starts`` (the
    first is 0): each arrival is counted in the phase its time falls in, so arrivals must
    come in time order. Windows slice ``[0, end)`` into ``window_width(end)`` spans; a request
    is counted, latency included, in the window of its arrival.
    """

    __slots__ = (
        "_count",
        "_ends",
        "_keys",
        "_last_window",
        "_next_phase",
        "_per_second",
        "_phase",
        "_phase_counts",
        "_phase_row",
        "_servers",
        "_starts",
        "_width",
        "_window_latencies",
        "_window_sent",
        "ejections",
        "failures",
        "in_flight",
        "peak",
        "sent",
        "timeouts",
        "unavailable",
    )

    def __init__(
        self, servers: Sequence[str], phase_starts: Sequence[float], end: float, keys: int
    ) -> None:
        count = self._count = len(servers)
        self._servers = tuple(servers)
        self.sent = [0] * count
        self.failures = [0] * count
        self.in_flight = [0] * count
        self.peak = [0] * count
        self.timeouts = 0
        self.unavailable = 0
        self.ejections: list[Ejection] = []
        # A flat key-major table, counts[key * servers + server]: one list, no dict per key.
        self._keys = [0] * (keys * count) if keys else None
        self._starts = tuple(phase_starts)
        self._ends = (*self._starts[1:], end)
        self._phase_counts = [[0] * count for _ in self._starts]
        self._phase = 0
        self._phase_row = self._phase_counts[0]
        self._next_phase = self._ends[0] if len(self._starts) > 1 else math.inf
        self._width = window_width(end)
        self._per_second = 1 / self._width
        windows = max(math.ceil(end * self._per_second * (1 - 1e-9)), 1)
        self._last_window = windows - 1
        # Flat window-major counts, like the keys; the latencies are kept per window only, and
        # the run's percentiles come from joining them.
        self._window_sent = [0] * (windows * count)
        self._window_latencies: list[list[float]] = [[] for _ in range(windows)]

    def picked(self, server: int, key: int | None, now: float) -> None:
        """A request arriving at ``now`` (with key index ``key``) was sent to ``server``."""
        while now >= self._next_phase:
            self._phase += 1
            self._phase_row = self._phase_counts[self._phase]
            last = self._phase + 1 == len(self._starts)
            self._next_phase = math.inf if last else self._ends[self._phase]
        self._phase_row[server] += 1
        # The window's index, inline (this runs once a request); anything past the end counts
        # in the last window.
        window = int(now * self._per_second)
        if window > self._last_window:
            window = self._last_window
        self._window_sent[window * self._count + server] += 1
        self.sent[server] += 1
        in_flight = self.in_flight[server] = self.in_flight[server] + 1
        if in_flight > self.peak[server]:
            self.peak[server] = in_flight
        if key is not None and self._keys is not None:
            self._keys[key * len(self._servers) + server] += 1

    def answered(self, server: int, ok: bool, latency: float, arrival: float) -> None:
        """A request to ``server`` that arrived at ``arrival`` had its outcome after ``latency``."""
        window = int(arrival * self._per_second)
        if window > self._last_window:
            window = self._last_window
        self._window_latencies[window].append(latency)
        self.in_flight[server] -= 1
        if not ok:
            self.failures[server] += 1

    def on_event(self, event: HealthEvent) -> None:
        """The balancer's ``on_event``: keep the ejections."""
        if event.kind is HealthEventKind.EJECTED and event.server is not None:
            self.ejections.append(Ejection(event.at, event.server, event.detail))

    def result(self, label: str, strategy: str, requests: int) -> StrategyResult:
        """Everything counted, as a frozen result; this sorts the latencies."""
        ejected = dict.fromkeys(self._servers, 0)
        for ejection in self.ejections:
            ejected[ejection.server] += 1
        request_shares = shares(self.sent)
        servers = tuple(
            ServerResult(name, self.sent[i], request_shares[i], self.failures[i], self.peak[i], n)
            for i, (name, n) in enumerate(ejected.items())
        )
        phases = tuple(
            Phase(start, end, sum(row), shares(row))
            for start, end, row in zip(self._starts, self._ends, self._phase_counts, strict=True)
        )
        width, count, sent = self._width, self._count, self._window_sent
        windows = []
        for i, latencies in enumerate(self._window_latencies):
            latencies.sort()
            windows.append(
                Window(
                    start=i * width,
                    end=self._ends[-1] if i == self._last_window else (i + 1) * width,
                    p50=percentile(latencies, 50) if latencies else None,
                    p99=percentile(latencies, 99) if latencies else None,
                    sent=tuple(sent[i * count : (i + 1) * count]),
                )
            )
        # Sorted runs, joined: the sort in summarize_latency merges them rather than sorting anew.
        everything = list(itertools.chain.from_iterable(self._window_latencies))
        return StrategyResult(
            label=label,
            strategy=strategy,
            requests=requests,
            failures=sum(self.failures) + self.unavailable,
            timeouts=self.timeouts,
            unavailable=self.unavailable,
            latency=summarize_latency(everything),
            peak_in_flight=max(self.peak),
            ejections=tuple(self.ejections),
            stickiness=None if self._keys is None else stickiness(self._keys, len(self._servers)),
            servers=servers,
            phases=phases,
            windows=tuple(windows),
        )
