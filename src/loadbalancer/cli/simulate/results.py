"""What a simulation run found: frozen per-strategy and per-server results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = [
    "Ejection",
    "LatencySummary",
    "Phase",
    "Results",
    "ServerResult",
    "StrategyResult",
    "Window",
]


@final
@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Client-observed latency in seconds, timeouts counted at the timeout (nearest rank)."""

    mean: float
    p50: float
    p90: float
    p99: float
    max: float


@final
@dataclass(frozen=True, slots=True)
class ServerResult:
    """One server under one strategy: the requests it was sent and how it fared."""

    server: str
    requests: int
    share: float
    failures: int
    peak_in_flight: int
    ejections: int


@final
@dataclass(frozen=True, slots=True)
class Phase:
    """The requests sent between two of the scenario's change times, and where they went.

    ``shares`` is aligned with ``Results.servers``.
    """

    start: float
    end: float
    requests: int
    shares: tuple[float, ...]


@final
@dataclass(frozen=True, slots=True)
class Window:
    """The requests that arrived in one slice of the run: where they went, how slow they were.

    Every window of a run is equally long (the last may be cut short by the run's end), so a
    strategy's windows show how it reacts over time. ``sent`` counts requests per server,
    aligned with ``Results.servers``; ``p50`` and ``p99`` are nearest-rank percentiles of
    their latencies in seconds (timeouts at the timeout), None if no request arrived.
    """

    start: float
    end: float
    p50: float | None
    p99: float | None
    sent: tuple[int, ...]

    @property
    def requests(self) -> int:
        """The requests sent to a server in this window."""
        return sum(self.sent)

    @property
    def shares(self) -> tuple[float, ...]:
        """Each server's fraction of this window's requests (all zero if there were none)."""
        total = self.requests
        return tuple(n / total if total else 0.0 for n in self.sent)


@final
@dataclass(frozen=True, slots=True)
class Ejection:
    """An EJECTED event reported by the balancer's ``on_event``."""

    at: float
    server: str
    detail: str


@final
@dataclass(frozen=True, slots=True)
class StrategyResult:
    """How one strategy did: traffic, latency, errors and health events.

    ``failures`` counts every failed request: server errors, ``timeouts`` and ``unavailable``
    (no server to pick). ``peak_in_flight`` is the most leases ever open on one server.
    ``stickiness`` is the fraction of keyed requests sent to the server their key went to most
    often (None without keys): 1.0 means every key always reached the same server.
    ``windows`` slice the run into equal spans of time, in order.
    """

    label: str
    strategy: str
    requests: int
    failures: int
    timeouts: int
    unavailable: int
    latency: LatencySummary
    peak_in_flight: int
    ejections: tuple[Ejection, ...]
    stickiness: float | None
    servers: tuple[ServerResult, ...]
    phases: tuple[Phase, ...]
    windows: tuple[Window, ...]

    @property
    def error_rate(self) -> float:
        """Failed requests as a fraction of all requests."""
        return self.failures / self.requests if self.requests else 0.0

    def server(self, name: str) -> ServerResult:
        """The result for server ``name``; KeyError if there is none."""
        for result in self.servers:
            if result.server == name:
                return result
        raise KeyError(name)


@final
@dataclass(frozen=True, slots=True)
class Results:
    """A whole run: the scenario's name, the seed, and one result per strategy, in order."""

    scenario: str
    seed: int
    duration: float
    servers: tuple[str, ...]
    strategies: tuple[StrategyResult, ...]

    def strategy(self, label: str) -> StrategyResult:
        """The result for the strategy labelled ``label``; KeyError if there is none."""
        for result in self.strategies:
            if result.label == label:
                return result
        raise KeyError(label)
