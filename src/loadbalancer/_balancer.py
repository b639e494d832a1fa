"""LoadBalancer: the pool, its mutation lock, and the picker that ``get`` calls."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import final

from ._errors import NoServersAvailableError
from ._events import HealthEvent
from .health._keeper import HealthKeeper, Plan
from ._lease import Lease, check_latency
from ._snapshot import Endpoint, Snapshot
from ._stats import ServerStats
from ._validation import (
    check_bool,
    check_callable,
    check_key,
    check_number,
    check_positive_int,
    check_server,
    check_weight,
)
from .health.outlier import OutlierDetection
from .health.slow_start import SlowStart
from .strategies._base import Key, Picker, PickFunction, Strategy
from .strategies.round_robin import RoundRobinStrategy

__all__ = ["LoadBalancer"]

_log = logging.getLogger("loadbalancer")


@final
class _EmptyPicker(Picker):
    __slots__ = ("_message",)

    def __init__(self, message: str) -> None:
        self._message = message

    def pick(self, key: Key | None = None) -> str:
        """Raise: there is nothing to pick."""
        if key is not None:
            check_key(key)
        raise NoServersAvailableError(self._message)


_EMPTY_PICKER = _EmptyPicker("no servers available: the pool is empty")

# After a picker rebuild on the request path fails, how long until it is tried again.
_RETRY_AFTER = 1.0


@final
class _HealthRollback:
    """Restores the health state of ``pool`` if the block raises: a failed call changes nothing."""

    __slots__ = ("_saved",)

    def __init__(self, pool: tuple[Endpoint, ...]) -> None:
        self._saved = [
            (e, e.healthy, e.ejected_until, e.ejections, e.returned_at, e.ramp_from) for e in pool
        ]

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            return
        for endpoint, healthy, until, ejections, returned_at, ramp_from in self._saved:
            endpoint.healthy = healthy
            endpoint.ejected_until = until
            endpoint.ejections = ejections
            endpoint.returned_at = returned_at
            endpoint.ramp_from = ramp_from


_EMPTY_PLAN = Plan((), (), False, 0, math.inf)


@final
@dataclass(frozen=True, slots=True)
class _View:
    """Everything a reader needs, published together by one reference assignment."""

    endpoints: dict[str, Endpoint]  # registration order; never mutated once published
    picker: Picker
    plan: Plan

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(self.endpoints)


_EMPTY_VIEW = _View({}, _EMPTY_PICKER, _EMPTY_PLAN)


def _check_strategy(strategy: object) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise TypeError(
            f"strategy must be a Strategy instance; did you mean {strategy.__name__}()?"
        )
    raise TypeError(f"strategy must be a Strategy instance, not {type(strategy).__name__}")


def _check_optional(value: object, kind: type, name: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, not {type(value).__name__}")


@final
class LoadBalancer:
    """A pool of up to ``max_servers`` unique servers and a strategy that picks among them.

    ``get()`` returns the next server (``NoServersAvailableError`` on an empty pool). Leases
    (``lease()``, ``acquire()``, ``done()``) track requests in flight and their outcomes,
    which feed load-aware strategies and ``outlier_detection``. Servers that are ejected or
    fail active health checks (``set_healthy``) are not picked, unless fewer than
    ``panic_threshold`` percent are healthy, when all are used (Envoy's panic mode).
    ``slow_start`` ramps new and returning servers up to their weight. Time comes from
    ``clock``; health changes are reported to ``on_event`` and the ``loadbalancer`` logger.

    Thread safety: every method may be called from any number of threads at once.

    * Mutations (``register``, ``unregister``, ``replace``, ``set_weight``, ``set_healthy``,
      ejections) are serialised by one lock. Each builds the new pool aside, asks the strategy
      for a picker, and publishes both with reference assignments; a call that raises changes
      nothing.
    * ``get`` takes no lock: it is the current picker's ``pick``, read once, so look it up on
      the balancer for each request (a saved ``lb.get`` keeps the pool of its moment). Picks
      never run under the balancer's lock; leases may rebuild the picker when a time-driven
      change is due, but never wait for the lock to do so.
    * Membership is linearisable: once ``unregister(s)`` has returned, no ``get`` that starts
      afterwards returns ``s``; of concurrent ``register(s)`` calls exactly one returns True;
      the pool never holds more than ``max_servers``, even for an instant.
    * Time-driven changes (an ejection ending, a slow-start step, a failure-percentage
      interval) are applied by the next ``acquire``/``lease``, ``done`` or ``refresh`` call
      that finds them due; ``get`` stays a bare pick.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_decay",
        "_due",
        "_health",
        "_lock",
        "_max_servers",
        "_on_event",
        "_strategy",
        "_view",
        "get",
    )

    get: PickFunction
    """Return the server for the next request; raise NoServersAvailableError if none."""

    def __init__(
        self,
        strategy: Strategy | None = None,
        max_servers: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
        outlier_detection: OutlierDetection | None = None,
        slow_start: SlowStart | None = None,
        panic_threshold: float = 50.0,
        on_event: Callable[[HealthEvent], object] | None = None,
    ) -> None:
        self._strategy = RoundRobinStrategy() if strategy is None else _check_strategy(strategy)
        self._max_servers = check_positive_int(max_servers, "max_servers")
        self._clock: Callable[[], float] = check_callable(clock, "clock")
        _check_optional(outlier_detection, OutlierDetection, "outlier_detection")
        _check_optional(slow_start, SlowStart, "slow_start")
        if slow_start is not None and not self._strategy.accepts_slow_start:
            raise ValueError(
                f"slow_start does not apply to {self._strategy!r}: it ignores weights or pins "
                "keys to servers; use a weight-aware strategy such as "
                "WeightedRoundRobinStrategy or PowerOfTwoChoicesStrategy"
            )
        self._health = HealthKeeper(
            outlier_detection,
            slow_start,
            check_number(panic_threshold, "panic_threshold", at_least=0, at_most=100),
        )
        self._on_event = None if on_event is None else check_callable(on_event, "on_event")
        self._decay = self._strategy.latency_decay
        self._lock = threading.Lock()
        self._view = _EMPTY_VIEW
        self._due = math.inf
        # get is the current picker's bound pick: a request costs one Python call, no more.
        self.get = _EMPTY_PICKER.pick

    # -- membership -------------------------------------------------------------------------

    def register(self, server: str, weight: float = 1) -> bool:
        """Add ``server``; return False if it is already present or the pool is full.

        ``weight`` (a positive finite number) matters to weight-aware strategies only.
        """
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoints = self._view.endpoints
            if server in endpoints or len(endpoints) >= self._max_servers:
                return False
            now = self._clock()
            endpoint = Endpoint(server, weight, now)
            self._health.joined(endpoint, now)
            events = self._publish({**endpoints, server: endpoint}, now)
        self._emit(events)
        return True

    def set_weight(self, server: str, weight: float) -> bool:
        """Change the weight of ``server``; return False if it is not present."""
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoint = self._view.endpoints.get(server)
            if endpoint is None:
                return False
            previous, endpoint.weight = endpoint.weight, weight
            try:
                events = self._publish(dict(self._view.endpoints), self._clock())
            except BaseException:
                endpoint.weight = previous
                raise
        self._emit(events)
        return True

    def unregister(self, server: str) -> bool:
        """Remove ``server``; return False if it is not present."""
        check_server(server)
        with self._lock:
            endpoints = self._view.endpoints
            if server not in endpoints:
                return False
            remaining = endpoints.copy()
            del remaining[server]
            events = self._publish(remaining, self._clock())
        self._emit(events)
        return True

    def replace(self, servers: Iterable[str] | Mapping[str, float]) -> None:
        """Make the pool exactly ``servers``, in that order, in one atomic step.

        Pass a mapping to set weights too; otherwise new servers get weight 1 and servers
        that stay keep theirs. Servers that stay keep their live state. Duplicates, bad names
        or weights, or more than ``max_servers`` raise ``ValueError``/``TypeError`` and change
        nothing.
        """
        if isinstance(servers, (str, bytes)) or not isinstance(servers, Iterable):
            raise TypeError(f"servers must be an iterable of str, not {type(servers).__name__}")
        weights: Mapping[str, float] = servers if isinstance(servers, Mapping) else {}
        wanted = [check_server(s, "servers[]") for s in servers]
        for server in weights:
            check_weight(weights[server], f"weight of {server!r}")
        duplicates = sorted(s for s, n in Counter(wanted).items() if n > 1)
        if duplicates:
            raise ValueError(f"servers contains duplicates: {duplicates}")
        if len(wanted) > self._max_servers:
            raise ValueError(
                f"servers has {len(wanted)} entries, more than max_servers={self._max_servers}"
            )
        with self._lock:
            current = self._view.endpoints
            now = self._clock()
            endpoints = {}
            for server in wanted:
                if server in current:
                    endpoints[server] = current[server]
                else:
                    endpoints[server] = Endpoint(server, 1, now)
                    self._health.joined(endpoints[server], now)
            changed = {
                s: endpoints[s].weight
                for s in weights
                if s in current and endpoints[s].weight != weights[s]
            }
            for server, weight in weights.items():
                endpoints[server].weight = weight
            try:
                events = self._publish(endpoints, now)
            except BaseException:
                for server, weight in changed.items():
                    current[server].weight = weight
                raise
        self._emit(events)

    # -- health -------------------------------------------------------------------------------

    def set_healthy(self, server: str, healthy: bool) -> bool:
        """Record an active health check's verdict; False if ``server`` is not registered.

        An unhealthy server is not picked (outside panic mode); one that becomes healthy
        again starts its slow start. New servers are healthy until told otherwise.
        """
        check_server(server)
        check_bool(healthy, "healthy")
        with self._lock:
            endpoint = self._view.endpoints.get(server)
            if endpoint is None:
                return False
            now = self._clock()
            with _HealthRollback((endpoint,)):
                events = self._health.set_healthy(endpoint, healthy, now)
                if events:
                    events += self._publish(dict(self._view.endpoints), now)
        self._emit(events)
        return True

    def refresh(self) -> None:
        """Apply whatever time has made due: ejections ending, slow-start steps, intervals."""
        now = self._clock()
        if now >= self._due:
            with self._lock:
                events = self._maintain(now)
            self._emit(events)

    @property
    def panic(self) -> bool:
        """True while too few servers are healthy and all of them are being used."""
        return self._view.plan.panic

    def _maintain_if_free(self, now: float) -> None:
        """The request path's maintenance: skipped while another thread holds the lock.

        A lease never waits for a rebuild: the thread already holding the lock is either
        doing this maintenance or a mutation, after which the next lease finds it due again.
        A strategy that fails to build here is logged, not raised into the request.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            events = self._maintain(now)
        except Exception:
            _log.exception("rebuilding the picker failed; retrying in %g s", _RETRY_AFTER)
            self._due = now + _RETRY_AFTER
            return
        finally:
            self._lock.release()
        self._emit(events)

    def _maintain(self, now: float) -> list[HealthEvent]:
        """Apply what is due at ``now``. Caller holds ``_lock``; on error nothing changes."""
        if now < self._due:
            return []  # another thread got here first
        endpoints = self._view.endpoints
        pool = tuple(endpoints.values())
        with _HealthRollback(pool):
            events = self._health.expire(pool, now)
            return events + self._publish(dict(endpoints), now)

    def _after_failure(self, endpoint: Endpoint, now: float) -> None:
        """Eject ``endpoint`` if its consecutive failures call for it (lease exit, done)."""
        outlier = self._health.outlier
        if outlier is None or endpoint.consecutive_failures < outlier.consecutive_failures:
            return
        try:
            with self._lock:
                endpoints = self._view.endpoints
                failures = endpoint.consecutive_failures  # again: a success may have reset it
                if failures < outlier.consecutive_failures or (
                    endpoints.get(endpoint.server) is not endpoint  # unregistered meanwhile
                ):
                    return
                pool = tuple(endpoints.values())
                with _HealthRollback(pool):
                    why = f"{failures} consecutive failures"
                    events = self._health.eject(endpoint, pool, now, why)
                    if events:
                        events += self._publish(dict(endpoints), now)
        except Exception:
            # Raised from a lease's exit this would mask the caller's own exception.
            _log.exception("ejecting %r failed; it stays in the pool", endpoint.server)
            return
        self._emit(events)

    def _publish(self, endpoints: dict[str, Endpoint], now: float) -> list[HealthEvent]:
        """Build a picker for ``endpoints`` and make both current. Caller holds ``_lock``."""
        pool = tuple(endpoints.values())
        plan = self._health.plan(pool, now)
        if plan.eligible:
            previous = self._view.picker
            snapshot = Snapshot.of(plan.eligible, self._clock, plan.weights)
            picker = self._strategy.build(
                snapshot, None if isinstance(previous, _EmptyPicker) else previous
            )
        elif pool:
            picker = _EmptyPicker(f"no healthy servers: all {len(pool)} are ejected or unhealthy")
        else:
            picker = _EMPTY_PICKER
        # The strategy may raise above; nothing has changed until these assignments.
        self._view = _View(endpoints, picker, plan)
        self.get = picker.pick
        self._due = plan.due
        return self._health.adopt(plan, len(pool), now)

    def _emit(self, events: list[HealthEvent]) -> None:
        """Log and report events; runs outside the lock, so a callback may use the balancer."""
        for event in events:
            _log.info("%s %s: %s", event.kind.value, event.server or "pool", event.detail)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    _log.exception("on_event callback failed for %s", event)

    # -- the request lifecycle ----------------------------------------------------------------

    def acquire(self, key: Key | None = None) -> Lease:
        """Pick a server and count a request in flight on it until the lease is released."""
        now = self._clock()
        if now >= self._due:
            self._maintain_if_free(now)
        view = self._view  # read once: the picker and the endpoints belong together
        endpoint = view.picker.acquire(key, view.endpoints)
        return Lease(self, endpoint, now)

    # The same call, spelled for ``with lb.lease() as server:``; an alias saves a call.
    lease = acquire

    def done(self, server: str, ok: bool = True, latency: float | None = None) -> bool:
        """Report the outcome of a request sent after ``get()``; False if not registered.

        ``get()`` does not count requests in flight, so this records only the outcome and,
        when given, the latency in seconds.
        """
        check_server(server)
        check_bool(ok, "ok")
        latency = check_latency(latency)
        endpoint = self._view.endpoints.get(server)
        if endpoint is None:
            return False
        now = self._clock()
        endpoint._complete(None, ok, latency, now, self._decay, self._strategy.failure_latency)
        if not ok:
            self._after_failure(endpoint, now)
        if now >= self._due:
            self._maintain_if_free(now)
        return True

    def stats(self) -> dict[str, ServerStats]:
        """Frozen per-server statistics, in registration order."""
        view = self._view
        effective = dict(zip(view.plan.eligible, view.plan.weights, strict=True))
        return {name: ServerStats.of(e, effective.get(e)) for name, e in view.endpoints.items()}

    # -- introspection ----------------------------------------------------------------------

    @property
    def servers(self) -> tuple[str, ...]:
        """The registered servers, in registration order."""
        return self._view.servers

    @property
    def weights(self) -> dict[str, float]:
        """Each registered server's configured weight, in registration order."""
        return {name: e.weight for name, e in self._view.endpoints.items()}

    @property
    def max_servers(self) -> int:
        """The capacity fixed at construction."""
        return self._max_servers

    @property
    def strategy(self) -> Strategy:
        """The strategy fixed at construction."""
        return self._strategy

    def __len__(self) -> int:
        return len(self._view.endpoints)

    def __contains__(self, server: object) -> bool:
        return server in self._view.endpoints

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.servers)

    def __repr__(self) -> str:
        return (
            f"LoadBalancer(strategy={self._strategy!r}, max_servers={self._max_servers}, "
            f"servers={list(self._view.endpoints)!r})"
        )
