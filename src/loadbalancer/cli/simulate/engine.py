"""The discrete-event simulation: clients, the real LoadBalancer, and simulated servers.

Time is virtual: a heap of events ordered by time, nothing sleeps, and a run is fully
determined by its seed. Each arrival picks a server through ``LoadBalancer.acquire(key)``, whose
``clock`` is the simulation's; the lease is released with the outcome and the latency the
client saw when the server answers or the client's timeout expires, whichever comes first.
A server serves ``capacity`` requests at once and queues the rest in FIFO order; it does not
know when a client has given up, so abandoned requests still take their turn (as in most
servers without deadline propagation).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from functools import partial
from heapq import heappop, heappush
from typing import Any, final

from ... import Lease, LoadBalancer, NoServersAvailableError, Strategy
from .registry import build_strategy, describe_strategy
from .results import Results, StrategyResult
from .scenario import DEFAULT_SEED, Behaviour, Latency, Scenario, StrategySpec
from .tally import Tally
from .workload import Workload, make_workload

__all__ = ["Progress", "run_scenario", "run_strategy"]

Progress = Callable[[str, float], None]
"""Called now and then with the strategy being run and the fraction of the whole run done."""

_DONE, _TIMEOUT, _CHANGE = 0, 1, 2
_PROGRESS_EVERY = 4096  # arrivals between progress reports


def _sampler(latency: Latency, rng: random.Random) -> Callable[[], float]:
    """A function drawing one service time from ``latency``."""
    if latency.distribution == "lognormal":
        # The log's mean that gives this mean: E[X] = exp(mu + sigma**2 / 2).
        mu = math.log(latency.mean) - latency.sigma**2 / 2
        return partial(rng.lognormvariate, mu, latency.sigma)
    if latency.distribution == "exponential":
        return partial(rng.expovariate, 1 / latency.mean)
    return itertools.repeat(latency.mean).__next__


@final
class _Server:
    """A simulated server's behaviour now and its queue; its randomness is its own."""

    __slots__ = (
        "busy",
        "capacity",
        "failure_latency",
        "failure_rate",
        "queue",
        "random",
        "rng",
        "service",
    )

    def __init__(self, behaviour: Behaviour, rng: random.Random) -> None:
        self.rng = rng
        self.random = rng.random
        self.busy = 0
        self.queue: deque[_Request] = deque()
        self.adopt(behaviour)

    def adopt(self, behaviour: Behaviour) -> None:
        """Behave as ``behaviour`` from now on (requests being served are not affected)."""
        self.capacity = behaviour.capacity
        self.failure_rate = behaviour.failure_rate
        self.failure_latency = behaviour.failure_latency
        self.service = _sampler(behaviour.latency, self.rng)


@final
class _Request:
    """One request: when it arrived, its lease, and whether the client still waits for it."""

    __slots__ = ("arrival", "failed", "lease", "open", "server", "service")

    def __init__(self, arrival: float, lease: Lease, server: int, service: float | None) -> None:
        self.arrival = arrival
        self.lease = lease
        self.server = server
        self.service = service  # recorded in a trace; None: the server draws one
        self.open = True
        self.failed = False


def _phase_starts(scenario: Scenario) -> list[float]:
    """Where the phases begin: time 0 and every change time within the run."""
    times = {c.at for s in scenario.servers for c in s.changes if 0 < c.at < scenario.duration}
    return [0.0, *sorted(times)]


@final
class _Simulation:
    """One strategy's run: the balancer, the servers, the event heap and the tally."""

    __slots__ = ("_acquire", "_events", "_index", "_order", "_servers", "_tally", "_timeout", "now")

    def __init__(self, scenario: Scenario, strategy: Strategy, tally: Tally, seed: int) -> None:
        self.now = 0.0
        balancer = LoadBalancer(
            strategy,
            max_servers=len(scenario.servers),
            clock=self.clock,
            outlier_detection=scenario.outlier_detection,
            # Strategies that ignore weights or pin keys refuse slow start; they run without.
            slow_start=scenario.slow_start if strategy.accepts_slow_start else None,
            panic_threshold=scenario.panic_threshold,
            on_event=tally.on_event,
            # Simulated time stands still while a picker builds: ejections apply at once, on
            # the request path, and the run stays a function of its seed.
            rebuild_in_background=False,
        )
        balancer.replace({s.name: s.weight for s in scenario.servers})  # one build, not ten
        self._acquire = balancer.acquire
        self._index = {s.name: i for i, s in enumerate(scenario.servers)}
        self._tally = tally
        self._timeout = scenario.timeout
        # Each server draws from its own stream: what one server draws does not depend on how
        # many requests the strategy sent to the others.
        self._servers = [
            _Server(s.behaviour, random.Random(f"{seed}/server/{s.name}")) for s in scenario.servers
        ]
        # (time, order, kind, payload): a _Request for _DONE and _TIMEOUT, (server index,
        # Behaviour) for _CHANGE. Any, because the kind decides the payload's type.
        self._events: list[tuple[float, int, int, Any]] = []
        self._order = itertools.count().__next__  # breaks ties between events at one time
        for i, server in enumerate(scenario.servers):
            for change in server.changes:
                if change.at < scenario.duration:
                    heappush(
                        self._events, (change.at, self._order(), _CHANGE, (i, change.behaviour))
                    )

    def clock(self) -> float:
        """The balancer's clock: simulated time."""
        return self.now

    def run(self, workload: Workload, progress: Callable[[float], None] | None) -> int:
        """Play every arrival of ``workload``, then every event until the last request ends;
        return how many requests arrived."""
        events = self._events
        arrivals = workload.arrivals()
        key_names = workload.key_names
        index = self._index
        end = workload.duration
        arrived = 0
        arrival = next(arrivals, None)
        while arrival is not None or events:
            # Events due at an arrival's time go first: a server freed at t serves at t.
            if arrival is None or (events and events[0][0] <= arrival[0]):
                self.now, _, kind, item = heappop(events)
                if kind == _DONE:
                    self._done(item)
                elif kind == _TIMEOUT:
                    if item.open:
                        assert self._timeout is not None
                        self._finish(item, False, self._timeout)
                        self._tally.timeouts += 1
                else:
                    at, behaviour = item
                    self._servers[at].adopt(behaviour)
                    self._drain(self._servers[at])
                continue
            self.now, key, service = arrival
            arrival = next(arrivals, None)
            arrived += 1
            if progress is not None and arrived % _PROGRESS_EVERY == 0:
                progress(min(self.now / end, 1.0))
            try:
                lease = self._acquire(None if key is None else key_names[key])
            except NoServersAvailableError:
                self._tally.unavailable += 1
                continue
            server = index[lease.server]
            self._tally.picked(server, key, self.now)
            self._arrive(_Request(self.now, lease, server, service))
        return arrived

    def _arrive(self, request: _Request) -> None:
        """Serve ``request`` now if its server has room, else queue it; arm its timeout."""
        server = self._servers[request.server]
        timeout = self._timeout
        if server.busy < server.capacity:
            server.busy += 1
            end = self._serve(request, server)
            if timeout is None or end - request.arrival <= timeout:
                return  # the answer comes in time: no timeout event needed
        elif timeout is None:
            server.queue.append(request)
            return
        else:
            server.queue.append(request)
        heappush(self._events, (request.arrival + timeout, self._order(), _TIMEOUT, request))

    def _serve(self, request: _Request, server: _Server) -> float:
        """Start serving ``request`` now; return when it will be done."""
        service = server.service() if request.service is None else request.service
        request.failed = server.failure_rate > 0.0 and server.random() < server.failure_rate
        if request.failed and server.failure_latency is not None:
            service = server.failure_latency
        end = self.now + service
        heappush(self._events, (end, self._order(), _DONE, request))
        return end

    def _done(self, request: _Request) -> None:
        """The server finished ``request``: answer its client, if still waiting; serve the next."""
        if request.open:
            self._finish(request, not request.failed, self.now - request.arrival)
        server = self._servers[request.server]
        server.busy -= 1
        if server.queue:
            self._drain(server)

    def _drain(self, server: _Server) -> None:
        """Start queued requests while the server has room."""
        queue = server.queue
        while queue and server.busy < server.capacity:
            server.busy += 1
            self._serve(queue.popleft(), server)

    def _finish(self, request: _Request, ok: bool, latency: float) -> None:
        """The client has its answer, or gave up: release the lease and count it."""
        request.open = False
        request.lease.release(ok=ok, latency=latency)
        self._tally.answered(request.server, ok, latency, request.arrival)


def run_strategy(
    scenario: Scenario,
    spec: StrategySpec,
    seed: int,
    workload: Workload,
    progress: Callable[[float], None] | None = None,
) -> StrategyResult:
    """Simulate ``workload`` on ``scenario``'s cluster balanced by ``spec``.

    ``progress`` is called now and then with the fraction of the run's time simulated.
    """
    names = [s.name for s in scenario.servers]
    tally = Tally(names, _phase_starts(scenario), scenario.duration, workload.keys)
    options = dict(spec.options)
    strategy = build_strategy(spec.name, options, random.Random(f"{seed}/strategy/{spec.label}"))
    requests = _Simulation(scenario, strategy, tally, seed).run(workload, progress)
    describe = describe_strategy(spec.name, options)
    return tally.result(spec.label, describe, requests)


def run_scenario(
    scenario: Scenario, *, seed: int | None = None, progress: Progress | None = None
) -> Results:
    """Run every strategy of ``scenario`` on the same requests and collect the results.

    ``seed`` defaults to the scenario's, else ``DEFAULT_SEED``. The same scenario and seed
    always give the same results, whichever other strategies run alongside.
    """
    if seed is None:
        seed = DEFAULT_SEED if scenario.seed is None else scenario.seed
    workload = make_workload(scenario, seed)
    results = []
    strategies = scenario.strategies
    for done, spec in enumerate(strategies):
        report = None
        if progress is not None:
            report = partial(_report, progress, spec.label, done, len(strategies))
            report(0.0)
        results.append(run_strategy(scenario, spec, seed, workload, report))
    if progress is not None and strategies:
        progress(strategies[-1].label, 1.0)
    return Results(
        scenario.name,
        seed,
        scenario.duration,
        tuple(s.name for s in scenario.servers),
        tuple(results),
    )


def _report(progress: Progress, label: str, done: int, count: int, fraction: float) -> None:
    progress(label, (done + fraction) / count)
