"""What one strategy's run counts as it goes, and the ``StrategyResult`` that adds up to."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

from ... import HealthEvent, HealthEventKind
from .metrics import shares, stickiness, summarize_latency
from .results import Ejection, Phase, ServerResult, StrategyResult

__all__ = ["Tally"]


@final
class Tally:
    """Per-server counters, latencies, key placements, phases and ejections of one run.

    Servers are counted by index into ``servers``. Phases begin at ``phase_starts`` (the
    first is 0): each arrival is counted in the phase its time falls in, so arrivals must
    come in time order.
    """

    __slots__ = (
        "_ends",
        "_keys",
        "_next_phase",
        "_phase",
        "_phase_counts",
        "_phase_row",
        "_servers",
        "_starts",
        "ejections",
        "failures",
        "in_flight",
        "latencies",
        "peak",
        "sent",
        "timeouts",
        "unavailable",
    )

    def __init__(
        self, servers: Sequence[str], phase_starts: Sequence[float], end: float, keys: int
    ) -> None:
        count = len(servers)
        self._servers = tuple(servers)
        self.sent = [0] * count
        self.failures = [0] * count
        self.in_flight = [0] * count
        self.peak = [0] * count
        self.latencies: list[float] = []
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

    def picked(self, server: int, key: int | None, now: float) -> None:
        """A request arriving at ``now`` (with key index ``key``) was sent to ``server``."""
        while now >= self._next_phase:
            self._phase += 1
            self._phase_row = self._phase_counts[self._phase]
            last = self._phase + 1 == len(self._starts)
            self._next_phase = math.inf if last else self._ends[self._phase]
        self._phase_row[server] += 1
        self.sent[server] += 1
        in_flight = self.in_flight[server] = self.in_flight[server] + 1
        if in_flight > self.peak[server]:
            self.peak[server] = in_flight
        if key is not None and self._keys is not None:
            self._keys[key * len(self._servers) + server] += 1

    def answered(self, server: int, ok: bool, latency: float) -> None:
        """The client of a request on ``server`` got its outcome after ``latency`` seconds."""
        self.latencies.append(latency)
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
        return StrategyResult(
            label=label,
            strategy=strategy,
            requests=requests,
            failures=sum(self.failures) + self.unavailable,
            timeouts=self.timeouts,
            unavailable=self.unavailable,
            latency=summarize_latency(self.latencies),
            peak_in_flight=max(self.peak),
            ejections=tuple(self.ejections),
            stickiness=None if self._keys is None else stickiness(self._keys, len(self._servers)),
            servers=servers,
            phases=phases,
        )
