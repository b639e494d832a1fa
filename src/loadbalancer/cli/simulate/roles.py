"""What sets each server of a scenario apart, in a few words, for the table and the plot.

A server's role is how it differs from the typical server (the weight and behaviour most
servers start with), such as ``2x size`` or ``5x slower``, followed by its incidents: the
spans in which its changes make it differ from how it started, such as ``fails 50% 10-20 s``.
Everything is derived from the scenario, so a new scenario is labelled without a word more.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import final

from .scenario import Behaviour, Scenario

__all__ = ["Incident", "incidents", "server_roles"]


@final
@dataclass(frozen=True, slots=True)
class Incident:
    """A span of the run in which ``server`` behaves as ``what`` says, unlike at the start."""

    server: str
    start: float
    end: float
    what: str
    until_the_end: bool

    @property
    def span(self) -> str:
        """When: ``10-20 s``, or ``from 10 s`` if it lasts to the end of the run."""
        return f"from {self.start:g} s" if self.until_the_end else f"{self.start:g}-{self.end:g} s"


def _times(ratio: float) -> str:
    """A ratio in two significant digits: ``2``, ``1.5``, ``10``."""
    return f"{ratio:.2g}"


def _differences(behaviour: Behaviour, weight: float, base: Behaviour, base_weight: float) -> str:
    """How ``behaviour`` with ``weight`` differs from ``base`` with ``base_weight``, or ``""``."""
    found = []
    size = behaviour.capacity / base.capacity
    heavier = weight / base_weight
    if math.isclose(size, heavier) and not math.isclose(size, 1):
        found.append(f"{_times(size)}x size")  # more capacity, and weighted to match
    else:
        if not math.isclose(heavier, 1):
            found.append(f"{_times(heavier)}x weight")
        if not math.isclose(size, 1):
            found.append(f"{_times(size)}x capacity")
    latency, usual = behaviour.latency, base.latency
    slower = latency.mean / usual.mean
    if not math.isclose(slower, 1):
        found.append(f"{_times(slower)}x slower" if slower > 1 else f"{_times(1 / slower)}x faster")
    if latency.distribution != usual.distribution:
        found.append(f"{latency.distribution} latency")
    elif latency.distribution == "lognormal" and not math.isclose(latency.sigma, usual.sigma):
        found.append(f"sigma {latency.sigma:g}")
    rate = behaviour.failure_rate
    if rate != base.failure_rate or (rate and behaviour.failure_latency != base.failure_latency):
        if not rate:
            found.append("never fails")
        elif behaviour.failure_latency is None:
            found.append(f"fails {rate * 100:.3g}%")
        else:
            found.append(f"fails {rate * 100:.3g}% in {behaviour.failure_latency * 1000:.3g} ms")
    return ", ".join(found)


def incidents(scenario: Scenario) -> tuple[Incident, ...]:
    """Every span in which a server's changes make it differ from its own start, in order."""
    found: list[Incident] = []
    for server in scenario.servers:
        changes = [c for c in server.changes if c.at < scenario.duration]
        for i, change in enumerate(changes):
            last = i + 1 == len(changes)
            end = scenario.duration if last else changes[i + 1].at
            what = _differences(change.behaviour, 1.0, server.behaviour, 1.0)
            if not what or end <= change.at:
                continue
            previous = found[-1] if found else None
            if previous and (previous.server, previous.what, previous.end) == (
                server.name,
                what,
                change.at,
            ):
                found[-1] = Incident(server.name, previous.start, end, what, last)
            else:
                found.append(Incident(server.name, change.at, end, what, last))
    return tuple(sorted(found, key=lambda incident: incident.start))


def server_roles(scenario: Scenario) -> dict[str, str]:
    """Each server's role by name (``5x slower``, ``fails 50% 10-20 s``); ``""`` if typical."""
    servers = scenario.servers
    # The most common start wins; on a tie, the first server's.
    (weight, typical), _ = Counter((s.weight, s.behaviour) for s in servers).most_common(1)[0]
    spans = incidents(scenario)
    roles = {}
    for server in servers:
        parts = [_differences(server.behaviour, server.weight, typical, weight)]
        parts += [f"{i.what} {i.span}" for i in spans if i.server == server.name]
        roles[server.name] = ", ".join(part for part in parts if part)
    return roles
