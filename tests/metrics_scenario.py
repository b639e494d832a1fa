"""The scripted run both metrics exporters are checked against: two balancers, and in the first
an ejection, a retry, a panic and a membership change, on a fake clock so every figure is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from loadbalancer import BalancerStats, Lease, LoadBalancer, OutlierDetection, RingHashStrategy

from .fakes import FakeClock


@dataclass
class Scenario:
    """The balancers by the names they are exported under, the clock they share, and what
    the run did that depends on the strategies' choices."""

    balancers: dict[str, LoadBalancer]
    clock: FakeClock
    first_attempt: str = ""  # the server call()'s first, failed attempt went to
    retry_attempt: str = ""  # the server its retry went to
    cache_server: str = ""  # the server the key "k" maps to in cache
    held: list[Lease] = field(default_factory=list)


def balancers() -> Scenario:
    """Two fresh balancers, ``api`` (round-robin over a-d) and ``cache`` (ring hash over x, y),
    before anything has happened: an exporter is attached to these, then ``run()`` drives them.
    """
    clock = FakeClock()
    api = LoadBalancer(
        max_servers=10,
        clock=clock,
        outlier_detection=OutlierDetection(),
        rebuild_in_background=False,  # ejections at once, so the figures are exact
    )
    api.replace(["a", "b", "c", "d"])
    cache = LoadBalancer(RingHashStrategy(), clock=clock, rebuild_in_background=False)
    cache.replace(["x", "y"])
    return Scenario({"api": api, "cache": cache}, clock)


def run(scenario: Scenario) -> None:
    """Drive the balancers. Afterwards, in ``api`` (binary fractions of seconds throughout, so
    that every figure is exact):

    * ``a`` failed 5 leases of 0.25 s each in a row, and is ejected for 30 s (its ejection 1,
      for consecutive_failures), with 20 s of it left at the end;
    * ``call()`` was made once: its first attempt (``first_attempt``) raised at once (a failure
      of 0 s), and its retry (``retry_attempt``) succeeded in 0.5 s: 1 retry, 0 hedges, 0
      rejected, 1 failover request;
    * ``b`` and ``c`` were then marked unhealthy, so 1 of 4 servers was healthy: panic,
      entered once, with every server eligible; 2 health changes to "unhealthy";
    * ``e`` was registered (5 servers, 2 healthy; membership changes: the first ``replace``
      and this one, 9.5 s before the end);
    * ``d`` has one more lease, still in flight.

    In ``cache``: 3 successful leases of 0.125 s each with the key ``"k"``, on
    ``cache_server``; 1 membership change (its ``replace``).
    """
    clock, api, cache = scenario.clock, scenario.balancers["api"], scenario.balancers["cache"]
    for _ in range(3):
        with cache.lease(key="k") as server:
            scenario.cache_server = server
            clock.advance(0.125)

    for _ in range(5):
        lease = api.acquire(exclude=["b", "c", "d"])
        assert lease.server == "a"
        clock.advance(0.25)
        lease.release(False)
    assert api.stats()["a"].ejected

    attempts: list[str] = []

    def first_fails(server: str) -> str:
        attempts.append(server)
        if len(attempts) == 1:
            raise ConnectionError(f"{server} refused")
        clock.advance(0.5)
        return server

    api.call(first_fails)
    scenario.first_attempt, scenario.retry_attempt = attempts

    api.set_healthy("b", False)
    api.set_healthy("c", False)
    assert api.panic
    api.register("e")
    scenario.held.append(api.acquire(exclude=["a", "b", "c", "e"]))
    assert scenario.held[0].server == "d"
    clock.advance(9.5)


def break_stats(monkeypatch: pytest.MonkeyPatch, broken: LoadBalancer) -> None:
    """Make ``broken.stats()`` raise ``RuntimeError`` (after reading, so reads still count),
    as a balancer whose figures cannot be read would: ``LoadBalancer`` is ``@final``, so the
    class's method is wrapped, for that one instance."""
    stats = LoadBalancer.stats

    def failing(lb: LoadBalancer) -> BalancerStats:
        reading = stats(lb)
        if lb is broken:
            raise RuntimeError("stats() failed")
        return reading

    monkeypatch.setattr(LoadBalancer, "stats", failing)
