"""The requests of a run: Poisson or recorded arrivals and their keys, the same for every strategy.

Arrivals are made as the engine pulls them, never held all at once: Poisson arrivals are drawn
again for each strategy from the same seeds, and a trace is read again, so every strategy sees
exactly the same requests (common random numbers) while memory stays flat.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import final

from .fields import ScenarioError
from .scenario import Scenario
from .trace import Trace, TraceRows

__all__ = ["Arrival", "Workload", "make_workload"]

Arrival = tuple[float, "int | None", "float | None"]
"""One request: its arrival time, its key index (None: no key), its recorded service time
(None: its server draws one)."""

_TRACE = "arrivals.trace"
_CHUNK = 4096  # keys drawn per call: the same draws as one call for all, in a bounded list


@final
class Workload:
    """The arrivals of a scenario for a seed, replayed by ``arrivals()`` as often as needed.

    ``keys`` is how many key indexes there can be (0: no keys); ``key_names[i]`` is the key
    string of index ``i``. A trace's keys are numbered in order of first appearance, and
    ``key_names`` fills in as the first replay meets them.
    """

    __slots__ = ("_cumulative", "_index", "_scenario", "_seed", "duration", "key_names", "keys")

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self._scenario = scenario
        self._seed = seed
        self.duration = scenario.duration
        trace, keys = scenario.arrivals.trace, scenario.keys
        self._index: dict[str, int] = {}
        self.key_names: list[str] = []
        self._cumulative: list[float] | None = None
        if trace is not None and trace.keys:
            self.keys = trace.keys
        elif keys is not None:
            self.keys = keys.population
            self.key_names = [f"user-{i}" for i in range(keys.population)]
            if keys.distribution == "zipf":
                weights = (1 / (k + 1) ** keys.exponent for k in range(keys.population))
                self._cumulative = list(itertools.accumulate(weights))
        else:
            self.keys = 0

    def arrivals(self) -> Iterator[Arrival]:
        """Every arrival of the run, in time order, the same on every call."""
        trace = self._scenario.arrivals.trace
        return self._poisson() if trace is None else self._replay(trace)

    def _drawn_keys(self) -> Iterator[int | None]:
        keys = self._scenario.keys
        if keys is None:
            return itertools.repeat(None)
        rng = random.Random(f"{self._seed}/keys")
        indexes = range(keys.population)
        cumulative = self._cumulative
        return itertools.chain.from_iterable(
            rng.choices(indexes, cum_weights=cumulative, k=_CHUNK) for _ in itertools.count()
        )

    def _poisson(self) -> Iterator[Arrival]:
        rng = random.Random(f"{self._seed}/arrivals")
        draw = rng.expovariate
        rate, duration = self._scenario.arrivals.rate, self.duration
        keys = self._drawn_keys()
        at = draw(rate)
        while at < duration:
            yield at, next(keys), None
            at += draw(rate)

    def _replay(self, trace: Trace) -> Iterator[Arrival]:
        duration = self.duration
        drawn = None if trace.keys else self._drawn_keys()
        index, names = self._index, self.key_names
        with TraceRows(trace.path, trace.name) as rows:
            for at, key, service in rows:
                if at > duration:
                    return
                if drawn is not None:
                    yield at, next(drawn), service
                elif key is None:
                    yield at, None, service
                else:
                    number = index.get(key)
                    if number is None:
                        if len(names) == self.keys:  # more than the check counted
                            raise ScenarioError(_TRACE, f"{trace.name} changed since it was read")
                        number = index[key] = len(names)
                        names.append(key)
                    yield at, number, service


def make_workload(scenario: Scenario, seed: int) -> Workload:
    """The requests of ``scenario`` for ``seed``.

    Every strategy sees exactly these requests (common random numbers), so differences
    between strategies are theirs, not the dice's.
    """
    return Workload(scenario, seed)
