"""LoadBalancer: the pool, its mutation lock, and the picker that ``get`` calls."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar, final

from ._errors import NoServersAvailableError
from ._events import HealthEvent
from ._lease import UNMARKED, Lease, Recorder, check_latency
from ._locks import acquire_contended
from ._rebuilds import CatchesUp, schedule
from ._rebuilds import generation as rebuild_generation
from ._snapshot import Endpoint, Histogram, Snapshot
from ._stats import (
    DEFAULT_LATENCY_BUCKETS,
    BalancerStats,
    DiscoveryReporter,
    DiscoveryStatus,
    ServerStats,
    check_buckets,
)
from ._tally import Tally
from ._validation import (
    check_bool,
    check_callable,
    check_clock_reading,
    check_exclude,
    check_key,
    check_number,
    check_positive_int,
    check_server,
    check_weight,
)
from .failover._budget import RetryBudget
from .failover._held import AsyncResults, FirstAttempt, Held, Results
from .failover._policy import (
    Classifier,
    HedgingPolicy,
    RetryPolicy,
    check_classifier_verdict,
    retry_on_exception,
)
from .failover._sync import call as _call
from .health._keeper import HealthKeeper, Plan
from .health.outlier import OutlierDetection
from .health.slow_start import SlowStart
from .strategies._base import Key, Picker, Strategy
from .strategies.round_robin import RoundRobinStrategy

T = TypeVar("T")

__all__ = ["LoadBalancer"]

_log = logging.getLogger("loadbalancer")

_new_lease = object.__new__


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

    __slots__ = ("_keeper", "_saved")

    def __init__(self, pool: tuple[Endpoint, ...], keeper: HealthKeeper) -> None:
        self._keeper = keeper
        self._saved = [
            (e, e.healthy, e.ejected_until, e.ejections, e.returned_at, e.ramp_from) for e in pool
        ]

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            return
        self._keeper.discard()
        for endpoint, healthy, until, ejections, returned_at, ramp_from in self._saved:
            endpoint.healthy = healthy
            endpoint.ejected_until = until
            endpoint.ejections = ejections
            endpoint.returned_at = returned_at
            endpoint.ramp_from = ramp_from
            self._keeper.restored(endpoint)


_EMPTY_PLAN = Plan((), (), False, 0, math.inf)


def _alive(ref: weakref.ref[DiscoveryReporter]) -> DiscoveryReporter | None:
    return ref()


_WELL = (True, None)  # a server's health when it is not among the view's unwell


def _discovery_status(runner: DiscoveryReporter, servers: int) -> DiscoveryStatus:
    """``runner``'s status; if it fails to give one, a status that says so (in ``last_error``)
    rather than an error: one broken runner must not hide the balancer's figures."""
    try:
        status = runner.status
        if isinstance(status, DiscoveryStatus):
            return status
        problem = f"status is {type(status).__name__}, not DiscoveryStatus"
    except Exception as error:
        problem = f"status raised {type(error).__name__}: {error}"
    name = getattr(runner, "name", None)
    source = name if isinstance(name, str) else type(runner).__name__
    return DiscoveryStatus(source, False, servers, 0, 0, 0, None, f"{problem} (a bug)")


_UNSCHEDULED = -1  # not queued for the rebuild thread in any generation


@final
@dataclass(frozen=True, slots=True)
class _View:
    """Everything a reader needs, published together by one reference assignment."""

    endpoints: dict[str, Endpoint]  # registration order; never mutated once published
    picker: Picker
    plan: Plan
    due: float  # the clock time at which time-driven changes must be applied
    # A reading below this is the clock stepping back: the publication time less a tolerance,
    # so that a thread that read the clock just before another published is not mistaken.
    floor: float
    # The lease path's shortcuts, fixed when the picker is published: whether the picker's
    # acquire is the default one (pick, then count), and its C-level keyless pick if it has one.
    plain: bool = False
    rotate: Callable[[], str] | None = None
    # The verdict and ejection deadline of every unwell server, as published: stats() reads
    # health from here, not from the endpoints, which a build in progress may have changed
    # and may yet roll back. Servers not in it are healthy and not ejected.
    unwell: Mapping[Endpoint, tuple[bool, float | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, endpoints: dict[str, Endpoint], picker: Picker, plan: Plan, floor: float) -> _View:
        """The view publishing ``picker`` over ``endpoints``, with its lease shortcuts."""
        plain = picker.acquire_is_pick()
        rotate = picker.next_server if plain else None
        unwell = {e: (e.healthy, e.ejected_until) for e in plan.unwell}
        return cls(endpoints, picker, plan, plan.due, floor, plain, rotate, unwell)

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(self.endpoints)


_EMPTY_VIEW = _View({}, _EMPTY_PICKER, _EMPTY_PLAN, math.inf, -math.inf)

# How far back a clock reading must be, from the latest publication, to count as a step back.
_STEP_BACK = 1.0


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


_DEFAULT_RETRY = RetryPolicy()  # frozen: one for every call that names none


def _check_call(fn: object, classify: object, retry: object, hedging: object) -> None:
    """Check the arguments of the failover engine's entry points, naming the wrong one."""
    check_callable(fn, "fn")
    check_callable(classify, "classify")
    _check_optional(retry, RetryPolicy, "retry")
    _check_optional(hedging, HedgingPolicy, "hedging")


def _check_results(results: object) -> None:
    for hook in ("set_aside", "discard"):
        if not callable(getattr(results, hook, None)):
            raise TypeError(
                f"results must have set_aside and discard methods, not {type(results).__name__}"
            )


@final
class LoadBalancer:
    """A pool of up to ``max_servers`` unique servers and a strategy that picks among them.

    ``max_servers`` is 10 by default and fixed at construction. On a full pool ``register()``
    returns False (logged at DEBUG) and ``replace()`` with more servers raises ``ValueError``,
    so size it for the service: ``LoadBalancer(max_servers=64)`` for up to 64 replicas.

    ``get()`` returns the next server (``NoServersAvailableError`` on an empty pool). Leases
    (``lease()``, ``acquire()``, ``done()``) track requests in flight and their outcomes
    (success, failure, or none), which feed load-aware strategies and ``outlier_detection``.
    ``call()`` and ``acall()`` run the failover engine: retries on servers not tried yet,
    within ``retry_budget``, and hedging. Servers that are ejected or fail active health checks
    (``set_healthy``) are not picked, unless fewer than ``panic_threshold`` percent are
    healthy, when all are used (Envoy's panic mode). ``slow_start`` ramps new and returning
    servers up to their weight. Time comes from ``clock`` (a finite number of seconds per
    reading) and retries wait with ``sleep``; health changes are reported to ``on_event`` and
    the ``loadbalancer`` logger.

    Thread safety: every method may be called from any number of threads at once.

    * Mutations (``register``, ``unregister``, ``replace``, ``set_weight``, ``set_healthy``,
      ejections) are serialised by one lock. Each builds the new pool aside, asks the strategy
      for a picker, and publishes pool and picker together with one reference assignment; a
      call that raises changes nothing.
    * ``get`` takes no lock: it reads the published picker once and picks. ``lb.picker`` is
      that picker itself, for hot loops that want one call per pick (it keeps the pool of its
      moment). Picks never run under the balancer's lock; leases may rebuild the picker when a
      time-driven change is due, but never wait for the lock to do so.
    * Membership is linearisable: once ``unregister(s)`` has returned, no ``get`` that starts
      afterwards returns ``s``; of concurrent ``register(s)`` calls exactly one returns True;
      the pool never holds more than ``max_servers``, even for an instant.
    * Changes the request path calls for (an ejection at a failing lease's exit or ``done``;
      an ejection ending, a slow-start step or a failure-percentage interval that a lease
      finds due) never make a request wait for a picker build. The request only queues the
      balancer for the process's rebuild thread ("loadbalancer rebuilds"), which applies them
      and publishes the new picker under the lock; picks meanwhile come from the previous
      picker. An ejection takes effect once the thread gets to it: after this balancer's build
      and those of balancers queued before it, and their ``on_event`` callbacks (keep those
      quick). It counts from the failure that called for it, with the failures in a row
      counted then. ``get`` stays a bare pick and queues nothing. ``refresh()`` applies all of
      it at once, on the calling thread. With ``rebuild_in_background=False`` the request path
      applies them itself (deterministic, for simulations and tests with a fake clock): an
      ejection waits for the lock and the build; time-driven changes are skipped while
      another thread holds the lock, and the next lease finds them due again.
    * Events go to ``on_event`` in the order they happened, on whichever thread applied them
      (the rebuild thread, for changes queued by requests), and a call returns only once its
      own events have been delivered.
    * The picker is rebuilt only when the eligible servers or their weights change. If the
      clock steps back, every deadline is capped relative to the new time, so no ejection
      outlasts its length.
    """

    __slots__ = (
        "__weakref__",
        "_background",
        "_buckets",
        "_clock",
        "_delivering",
        "_health",
        "_lock",
        "_max_servers",
        "_on_event",
        "_outbox",
        "_recorder",
        "_ref",
        "_reporters",
        "_retry_at",
        "_retry_budget",
        "_scheduled",
        "_sleep",
        "_strategy",
        "_suspects",
        "_tally",
        "_view",
        "_watchers",
    )

    def __init__(
        self,
        strategy: Strategy | None = None,
        max_servers: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        outlier_detection: OutlierDetection | None = None,
        slow_start: SlowStart | None = None,
        panic_threshold: float = 50.0,
        retry_budget: RetryBudget | None = None,
        on_event: Callable[[HealthEvent], object] | None = None,
        rebuild_in_background: bool = True,
    ) -> None:
        self._strategy = RoundRobinStrategy() if strategy is None else _check_strategy(strategy)
        self._max_servers = check_positive_int(max_servers, "max_servers")
        self._clock: Callable[[], float] = check_callable(clock, "clock")
        self._sleep: Callable[[float], object] = check_callable(sleep, "sleep")
        _check_optional(outlier_detection, OutlierDetection, "outlier_detection")
        _check_optional(slow_start, SlowStart, "slow_start")
        _check_optional(retry_budget, RetryBudget, "retry_budget")
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
        self._retry_budget = RetryBudget() if retry_budget is None else retry_budget
        self._on_event = None if on_event is None else check_callable(on_event, "on_event")
        self._recorder = Recorder(
            self._clock,
            check_number(self._strategy.latency_decay, "strategy.latency_decay", above=0),
            check_number(self._strategy.failure_latency, "strategy.failure_latency", at_least=0),
            self._after_failure,
        )
        self._lock = threading.Lock()
        self._view = _EMPTY_VIEW
        self._background = check_bool(rebuild_in_background, "rebuild_in_background")
        # The rebuild-thread generation it is queued in, until it is caught up.
        self._scheduled = _UNSCHEDULED
        # Servers that failed enough to be ejected: when, and how many times in a row.
        self._suspects: dict[Endpoint, tuple[float, int]] = {}
        self._retry_at = -math.inf  # after a failed build, no other is asked for until then
        # Events published, not yet delivered; None marks a change of the servers.
        self._outbox: deque[HealthEvent | None] = deque()
        self._watchers: tuple[Callable[[tuple[str, ...]], object], ...] = ()
        self._delivering = threading.RLock()
        self._ref: weakref.ref[CatchesUp] = weakref.ref(self)
        self._tally = Tally()
        self._buckets: tuple[float, ...] | None = None  # the latency histogram's, once enabled
        self._reporters: list[weakref.ref[DiscoveryReporter]] = []
        self._now()  # a clock that returns nonsense is refused here, not at the first request

    def _now(self) -> float:
        return self._recorder.now()

    # -- picking --------------------------------------------------------------------------

    def get(self, key: Key | None = None, exclude: Collection[str] = ()) -> str:
        """Return the server for the next request; raise NoServersAvailableError if none.

        ``key`` (``str`` or ``bytes``) pins the request to a server for hashing strategies.
        ``exclude`` names servers already tried: the pick is made among the others, in the
        strategy's own terms (the next in rotation, the best remaining, the key's next
        server), and only if every eligible server is excluded does it return one of them.
        """
        if exclude:
            return self._view.picker.pick_excluding(key, check_exclude(exclude))
        return self._view.picker.pick(key)

    @property
    def picker(self) -> Picker:
        """The current picker: ``lb.picker.pick`` is ``get`` in one call, for hot loops.

        It keeps picking from the pool as it was when read, so read it again after the pool
        may have changed.
        """
        return self._view.picker

    # -- membership -------------------------------------------------------------------------

    def register(self, server: str, weight: float = 1) -> bool:
        """Add ``server``; return False if it is already present or the pool is full.

        ``weight`` (a positive finite number) matters to weight-aware strategies only.
        A full pool (``max_servers`` servers, 10 by default) refuses a new server by returning
        False, not by raising, and says so at DEBUG on the ``loadbalancer`` logger: check the
        result, or make the balancer with a ``max_servers`` that fits the service.
        """
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoints = self._view.endpoints
            if server in endpoints:
                return False
            if len(endpoints) >= self._max_servers:
                _log.debug(
                    "register(%r) returned False: the pool is full (max_servers=%d); "
                    "make the LoadBalancer with a larger max_servers to add it",
                    server,
                    self._max_servers,
                )
                return False
            now = self._now()
            endpoint = self._new_endpoint(server, weight, now)
            grown = endpoints.copy()  # copy() has a fast path that {**endpoints} lacks
            grown[server] = endpoint
            self._post(self._publish(grown, now))
            self._tally.membership_changed(now)
            self._post_membership()
        self._deliver()
        return True

    def set_weight(self, server: str, weight: float) -> bool:
        """Change the weight of ``server``; return False if it is not present."""
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoint = self._view.endpoints.get(server)
            if endpoint is None:
                return False
            now = self._now()
            previous, endpoint.weight = endpoint.weight, weight
            try:
                self._post(self._publish(dict(self._view.endpoints), now))
            except BaseException:
                endpoint.weight = previous
                raise
            if weight != previous:
                self._tally.membership_changed(now)
        self._deliver()
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
            now = self._now()
            self._post(self._publish(remaining, now))
            self._tally.membership_changed(now)
            self._post_membership()
        self._deliver()
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
        # Each name and weight is read exactly once: a mapping that changes while it is read
        # cannot slip a value past the checks.
        weights: dict[str, float] = {}
        if isinstance(servers, Mapping):
            wanted = []
            for server, weight in list(servers.items()):
                wanted.append(check_server(server, "servers[]"))
                weights[server] = check_weight(weight, f"weight of {server!r}")
        else:
            wanted = [check_server(s, "servers[]") for s in servers]
        duplicates = sorted(s for s, n in Counter(wanted).items() if n > 1)
        if duplicates:
            raise ValueError(f"servers contains duplicates: {duplicates}")
        if len(wanted) > self._max_servers:
            raise ValueError(
                f"servers has {len(wanted)} entries, more than max_servers={self._max_servers}"
            )
        with self._lock:
            current = self._view.endpoints
            now = self._now()
            endpoints = {}
            for server in wanted:
                if server in current:
                    endpoints[server] = current[server]
                else:
                    endpoints[server] = self._new_endpoint(server, 1, now)
            changed = {
                s: endpoints[s].weight
                for s in weights
                if s in current and endpoints[s].weight != weights[s]
            }
            for server, weight in weights.items():
                endpoints[server].weight = weight
            try:
                self._post(self._publish(endpoints, now))
            except BaseException:
                for server, weight in changed.items():
                    current[server].weight = weight
                raise
            if changed or endpoints.keys() != current.keys():  # a new order alone is no change
                self._tally.membership_changed(now)
            if endpoints.keys() != current.keys():
                self._post_membership()
        self._deliver()

    def _new_endpoint(self, server: str, weight: float, now: float) -> Endpoint:
        """A joining server's endpoint, its slow start begun. Caller holds ``_lock``."""
        endpoint = Endpoint(server, weight, now)
        self._health.joined(endpoint, now)
        if self._buckets is not None:
            endpoint.histogram = Histogram(self._buckets)
        return endpoint

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
            now = self._now()
            with _HealthRollback((endpoint,), self._health):
                events = self._health.set_healthy(endpoint, healthy, now)
                if events:
                    events += self._publish(dict(self._view.endpoints), now)
                self._post(events)
        self._deliver()
        return True

    def refresh(self) -> None:
        """Apply now, on this thread, what is due: ejections, their ends, slow-start steps.

        Everything the request path has queued for the rebuild thread is applied too, so after
        ``refresh`` returns the picker reflects every failure reported before it was called.
        """
        with self._lock:
            self._post(self._catch_up_locked())
        self._deliver()

    def _catch_up(self) -> None:
        """The rebuild thread's work for this balancer (see ``LoadBalancer``).

        A strategy that fails to build is logged, and tried again after ``_RETRY_AFTER``:
        until then, failures queue their servers without asking for another build.
        """
        with self._lock:
            try:
                self._post(self._catch_up_locked())
            except BaseException:
                _log.exception("rebuilding the picker failed; retrying in %g s", _RETRY_AFTER)
                now = self._now()
                self._retry_at = now + _RETRY_AFTER
                self._view = replace(self._view, due=self._retry_at, floor=now - _STEP_BACK)
                return
        self._deliver()

    def _catch_up_locked(self) -> list[HealthEvent]:
        """Judge the queued suspects, apply what is due, publish once. Caller holds ``_lock``.

        On error nothing has changed: the servers' health is rolled back and the suspects
        are queued again.
        """
        # Cleared first: a request that queues the balancer from here on is served again.
        self._scheduled = _UNSCHEDULED
        now = self._now()
        suspects = self._suspects
        judged = []
        while suspects:  # popitem is atomic: a failure queued meanwhile is judged next time
            judged.append(suspects.popitem())
        view = self._view
        if not judged and view.floor <= now < view.due:
            return []
        endpoints = view.endpoints
        pool = tuple(endpoints.values())
        try:
            with _HealthRollback(pool, self._health):
                events: list[HealthEvent] = []
                for endpoint, (failed_at, failures) in judged:
                    events += self._judge(endpoint, pool, failed_at, failures)
                events += self._health.expire(pool, now)
                return events + self._publish(dict(endpoints), now)
        except BaseException:
            for endpoint, first in judged:
                suspects.setdefault(endpoint, first)
            raise

    def _schedule(self) -> bool:
        """Queue this balancer for the rebuild thread unless it is queued already.

        False when the rebuild thread cannot be started (interpreter shutdown, no threads
        left): the caller then does the work itself.
        """
        generation = rebuild_generation()
        if self._scheduled == generation:
            return True
        self._scheduled = generation  # a race queues it twice: the second catch-up is a no-op
        try:
            schedule(self._ref)
        except Exception:
            self._scheduled = _UNSCHEDULED
            return False
        return True

    @property
    def panic(self) -> bool:
        """True while too few servers are healthy and all of them are being used."""
        return self._view.plan.panic

    def _maintain_if_free(self, now: float) -> None:
        """The request path's maintenance: queued for the rebuild thread, or done if free.

        A lease never waits for a rebuild. In the background (the default) the rebuild thread
        does it. Otherwise it is skipped while another thread holds the lock: that thread is
        either doing this maintenance or a mutation, after which the next lease finds it due
        again. A strategy that fails to build is logged, not raised into the request.
        """
        if self._background and self._schedule():
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._post(self._maintain(now))
        except Exception:
            _log.exception("rebuilding the picker failed; retrying in %g s", _RETRY_AFTER)
            self._view = replace(self._view, due=now + _RETRY_AFTER, floor=now - _STEP_BACK)
            return
        finally:
            self._lock.release()
        self._deliver()

    def _maintain(self, now: float) -> list[HealthEvent]:
        """Apply what is due at ``now``. Caller holds ``_lock``.

        On error the servers' health is rolled back; a failure-percentage window that was
        being judged is not, and starts afresh.
        """
        view = self._view
        if view.floor <= now < view.due:
            return []  # another thread got here first
        endpoints = view.endpoints
        pool = tuple(endpoints.values())
        with _HealthRollback(pool, self._health):
            events = self._health.expire(pool, now)
            return events + self._publish(dict(endpoints), now)

    def _after_failure(self, endpoint: Endpoint, now: float) -> None:
        """Eject ``endpoint`` if its consecutive failures call for it (lease exit, done)."""
        outlier = self._health.outlier
        if outlier is None or endpoint.consecutive_failures < outlier.consecutive_failures:
            return
        if self._background:
            # Judged on the rebuild thread as of now, with the failures in a row counted now:
            # a success that lands before the judgement does not cancel the ejection. One entry
            # per server (setdefault is atomic): the first failure that called for it.
            self._suspects.setdefault(endpoint, (now, endpoint.consecutive_failures))
            if now < self._retry_at:
                return  # a build failed lately: the lease that finds it due retries it
            if self._schedule():
                return
            # No rebuild thread (interpreter shutdown): judge here, as without one.
            self._suspects.pop(endpoint, None)
        try:
            with self._lock:
                pool = tuple(self._view.endpoints.values())
                with _HealthRollback(pool, self._health):
                    events = self._judge(endpoint, pool, now, None)
                    if events:
                        events += self._publish(dict(self._view.endpoints), now)
                    self._post(events)
        except Exception:
            # Raised from a lease's exit this would mask the caller's own exception.
            _log.exception("ejecting %r failed; it stays in the pool", endpoint.server)
            return
        self._deliver()

    def _judge(
        self,
        endpoint: Endpoint,
        pool: tuple[Endpoint, ...],
        failed_at: float,
        failures: int | None,
    ) -> list[HealthEvent]:
        """Eject ``endpoint`` as of ``failed_at`` for ``failures`` in a row (no publishing).

        ``failures=None`` judges the server's count now (the failing request's own path);
        a count taken at ``failed_at`` is judged as it was then, unless the server has come
        back from an ejection since. Caller holds ``_lock``, and a ``_HealthRollback`` over
        ``pool``, the current pool.
        """
        outlier = self._health.outlier
        if outlier is None or self._view.endpoints.get(endpoint.server) is not endpoint:
            return []  # unregistered since
        if failures is None:
            failures = endpoint.consecutive_failures  # again: a success may have reset it
        elif endpoint.returned_at > failed_at:
            return []  # ejected and back since: those failures were judged then
        if failures < outlier.consecutive_failures:
            return []
        why = f"{failures} consecutive failures"
        return self._health.eject(endpoint, pool, failed_at, why, "consecutive_failures")

    def _publish(self, endpoints: dict[str, Endpoint], now: float) -> list[HealthEvent]:
        """Build a picker for ``endpoints`` and make both current. Caller holds ``_lock``."""
        pool = tuple(endpoints.values())
        view = self._view
        if now < view.floor:  # the clock stepped back: no deadline may outlast its length
            self._health.rebase(pool, now)
        plan = self._health.plan(pool, now)
        if plan.eligible:
            previous = view.picker
            if plan.eligible == view.plan.eligible and plan.weights == view.plan.weights:
                picker = previous  # same servers at the same weights: nothing to rebuild
            else:
                # Everyone eligible (the usual case): the names are the dict's keys, in order.
                names = tuple(endpoints) if plan.eligible is pool else None
                snapshot = Snapshot.of(plan.eligible, self._clock, plan.weights, names)
                picker = self._strategy.build(
                    snapshot, None if isinstance(previous, _EmptyPicker) else previous
                )
                if not isinstance(picker, Picker):
                    raise TypeError(
                        f"{self._strategy!r}.build must return a Picker, "
                        f"not {type(picker).__name__}"
                    )
        elif pool:
            picker = _EmptyPicker(f"no healthy servers: all {len(pool)} are ejected or unhealthy")
        else:
            picker = _EMPTY_PICKER
        # The strategy may raise above; nothing has changed until this assignment.
        self._view = _View.of(endpoints, picker, plan, now - _STEP_BACK)
        return self._health.adopt(plan, len(pool), now)

    def _post(self, events: list[HealthEvent]) -> None:
        """Count ``events`` and queue them for delivery. Caller holds ``_lock``, so the queue
        is in order, and the events' changes are published."""
        if events:
            self._tally.count(events, self._view.endpoints)
            self._outbox.extend(events)

    def _post_membership(self) -> None:
        """Queue a call of the ``watch_servers`` callbacks. Caller holds ``_lock``."""
        if self._watchers:
            self._outbox.append(None)

    def _deliver(self) -> None:
        """Log and report queued events, in the order they happened; runs outside ``_lock``.

        So a callback may use the balancer: its own events are delivered after the one being
        delivered, on the same thread (the delivery lock is reentrant). A thread that finds
        another delivering waits for it, so a call's events have all been delivered when it
        returns, whichever thread delivered them.
        """
        outbox = self._outbox
        # Taken even with nothing queued: another thread may be delivering this call's events.
        with self._delivering:
            while outbox:
                event = outbox.popleft()
                if event is None:
                    self._tell_watchers()
                    continue
                _log.info("%s %s: %s", event.kind.value, event.server or "pool", event.detail)
                if self._on_event is not None:
                    try:
                        self._on_event(event)
                    except Exception:
                        _log.exception("on_event callback failed for %s", event)

    def _tell_watchers(self) -> None:
        for watcher in self._watchers:
            # Read for each: a callback that changes the pool must not leave the next
            # callbacks with the servers as they were before.
            servers = self._view.servers
            try:
                watcher(servers)
            except Exception:
                _log.exception("watch_servers callback failed for %s", servers)

    def watch_servers(self, callback: Callable[[tuple[str, ...]], object]) -> Callable[[], None]:
        """Call ``callback(servers)`` now and after every change of the registered servers.

        For what is kept per server (one gRPC channel per backend, a connection pool):
        ``servers`` is the pool as it is when the callback is called, in order, so that a
        callback reconciles to it, and never to an older pool than one it was given before
        (two quick changes may come as two calls with the same servers). Calls are made one
        at a time, outside the balancer's lock, on the thread that made the change or one
        delivering for it; a weight change calls nothing. Returns a function that stops the
        calls: once it returns, no call is under way or to come (unless it is called from a
        callback). If the first call raises, nothing is watched and the error propagates; a
        later call that raises is logged.
        """
        check_callable(callback, "callback")
        with self._delivering:  # nothing is delivered between the first call and the next
            self._deliver()
            with self._lock:
                self._watchers = (*self._watchers, callback)
                servers = self._view.servers
            try:
                callback(servers)
            except BaseException:
                self._unwatch(callback)
                raise
        return lambda: self._unwatch(callback)

    def _unwatch(self, callback: Callable[[tuple[str, ...]], object]) -> None:
        # Under the delivery lock: a delivery under way on another thread ends first.
        with self._delivering, self._lock:
            watchers = list(self._watchers)
            if callback in watchers:
                watchers.remove(callback)
            self._watchers = tuple(watchers)

    # -- the request lifecycle ----------------------------------------------------------------

    def acquire(self, key: Key | None = None, exclude: Collection[str] = ()) -> Lease:
        """Pick a server and count a request in flight on it until the lease is released.

        ``key`` and ``exclude`` are as for ``get``. Use the lease as ``with lb.lease() as
        server:`` (or ``async with``), or call ``lease.release(ok)`` yourself.
        """
        now = self._clock()
        if now.__class__ is not float or now - now != 0.0:
            now = check_clock_reading(now)
        view = self._view  # read once: the picker and the endpoints belong together
        if now >= view.due or now < view.floor:
            self._maintain_if_free(now)
            view = self._view
        if exclude:
            endpoint = view.picker.acquire(key, view.endpoints, check_exclude(exclude))
        elif view.plain:
            # Picker.acquire and Endpoint.begin, inlined: this runs once per request, and each
            # Python frame saved is about a tenth of a lease.
            rotate = view.rotate
            endpoint = view.endpoints[
                rotate() if rotate is not None and key is None else view.picker.pick(key)
            ]
            lock = endpoint._lock
            if not lock.acquire(False):
                acquire_contended(lock)
            endpoint.in_flight += 1
            endpoint.load += 1
            endpoint.picks += 1
            lock.release()
            listener = endpoint.listener
            if listener is not None:
                listener(endpoint)
        else:
            endpoint = view.picker.acquire(key, view.endpoints)
        # Lease(self._recorder, endpoint, now), without the frame of its __init__.
        lease = _new_lease(Lease)
        lease.server = endpoint.server
        lease._recorder = self._recorder
        lease._endpoint = endpoint
        lease._started = now
        lease._outcome = UNMARKED
        lease.released = False
        return lease

    # The same call, spelled for ``with lb.lease() as server:``; an alias saves a call.
    lease = acquire

    def done(self, server: str, ok: bool = True, latency: float | None = None) -> bool:
        """Report the outcome of a request sent after ``get()``; False if not registered.

        ``get()`` does not count requests in flight, so this records only the outcome (True
        or False) and, when given, the latency in seconds. A ``get()`` that is never reported,
        such as one whose request was cancelled, is not counted anywhere: that is its "no
        outcome".
        """
        check_server(server)
        check_bool(ok, "ok")
        latency = check_latency(latency)
        endpoint = self._view.endpoints.get(server)
        if endpoint is None:
            return False
        now = self._now()
        recorder = self._recorder
        endpoint._complete(None, ok, latency, now, recorder.decay, recorder.failure_latency)
        if not ok:
            self._after_failure(endpoint, now)
        view = self._view
        if now >= view.due or now < view.floor:
            self._maintain_if_free(now)
        return True

    # -- the failover engine ----------------------------------------------------------------

    def call(
        self,
        fn: Callable[[str], T],
        *,
        key: Key | None = None,
        retry: RetryPolicy | None = None,
        classify: Classifier[T] = retry_on_exception,
    ) -> T:
        """Return ``fn(server)``, trying other servers when an attempt fails retryably.

        Each attempt leases a server (``key`` as for ``get``) and calls ``fn`` with it;
        ``classify`` turns what happened into a ``Verdict``: the outcome recorded on that
        server (success, failure or none) and whether another server may be tried. The
        default counts a return as a success and any ``Exception`` as a retryable failure.
        A retry goes to a server not tried yet (none left: no retry), after a jittered
        backoff (``sleep``), while ``retry`` allows more attempts (default ``RetryPolicy()``:
        one retry) and the balancer's ``retry_budget`` has a token for it. The answer is the
        last attempt's: its result returned, or its exception raised (noting, on Python
        3.11+, when the budget refused its retry). A ``BaseException`` that is not an
        ``Exception`` (a ``KeyboardInterrupt``) ends the attempt with no outcome and
        propagates at once.
        """
        _check_call(fn, classify, retry, None)
        return _call(
            self.acquire,
            self._retry_budget,
            fn,
            key=key,
            policy=_DEFAULT_RETRY if retry is None else retry,
            classify=classify,
            sleep=self._sleep,
        ).result

    def call_held(
        self,
        fn: Callable[[str], T],
        *,
        results: Results[T],
        key: Key | None = None,
        retry: RetryPolicy | None = None,
        classify: Classifier[T] = retry_on_exception,
        first: FirstAttempt[T] | None = None,
    ) -> Held[T]:
        """As ``call``, for results that outlive the call: the answer keeps its lease.

        For a result still in use when ``fn`` returns (an HTTP response whose body is yet to
        be read, a stream): the ``Held`` answer's ``release()`` ends its lease when the
        caller is done with it, so in-flight counts and latency cover the whole stream.
        ``results`` frees the results that are not the answer: ``set_aside`` one that is
        being retried (read its body, give its connection back), ``discard`` one replaced.
        ``first``: the caller already made the first attempt (``retry_budget.deposit()``,
        then ``acquire(key)``, then ``fn`` and ``classify``): the call goes on from its
        verdict, as if the engine had made it, and takes its result and error (``first``
        keeps neither, so an error raised from the call is not held back by it).
        """
        _check_call(fn, classify, retry, None)
        _check_results(results)
        if first is not None:
            _check_optional(first, FirstAttempt, "first")
            check_classifier_verdict(first.verdict)
        return _call(
            self.acquire,
            self._retry_budget,
            fn,
            key=key,
            policy=_DEFAULT_RETRY if retry is None else retry,
            classify=classify,
            sleep=self._sleep,
            results=results,
            first=first,
        )

    async def acall(
        self,
        fn: Callable[[str], Awaitable[T]],
        *,
        key: Key | None = None,
        retry: RetryPolicy | None = None,
        hedging: HedgingPolicy | None = None,
        classify: Classifier[T] = retry_on_exception,
    ) -> T:
        """The asyncio twin of ``call``: ``await fn(server)``, with retries or hedging.

        As ``call``, but backoff waits with ``asyncio.sleep``, and ``retry.per_try_timeout``
        is enforced: an attempt past it is cancelled and classified with an
        ``AttemptTimeoutError``. With ``hedging`` (for idempotent requests only), another server
        is tried whenever ``hedging.delay`` passes without an answer, up to
        ``hedging.attempts`` attempts in all; the first answer that is not a retryable failure wins
        and the others are cancelled with no outcome. Cancelling the call (a client timeout,
        ``asyncio.wait_for``) cancels every attempt, each with no outcome.
        """
        _check_call(fn, classify, retry, hedging)
        from .failover._async import acall  # asyncio loads only for async callers

        held = await acall(
            self.acquire,
            self._retry_budget,
            fn,
            key=key,
            policy=_DEFAULT_RETRY if retry is None else retry,
            hedging=hedging,
            classify=classify,
        )
        return held.result

    async def acall_held(
        self,
        fn: Callable[[str], Awaitable[T]],
        *,
        results: AsyncResults[T],
        key: Key | None = None,
        retry: RetryPolicy | None = None,
        hedging: HedgingPolicy | None = None,
        classify: Classifier[T] = retry_on_exception,
        first: FirstAttempt[T] | None = None,
    ) -> Held[T]:
        """The asyncio twin of ``call_held``: ``acall`` whose answer keeps its lease.

        A hedge that loses has its result (if any) discarded, in a task if need be.
        ``first``: the caller already made the first attempt (``retry_budget.deposit()``,
        then ``acquire(key)``, then ``fn`` and ``classify``): the call goes on from its
        verdict, as if the engine had made it (not with ``hedging``), and takes its result
        and error, as ``call_held`` does.
        """
        _check_call(fn, classify, retry, hedging)
        _check_results(results)
        if first is not None:
            _check_optional(first, FirstAttempt, "first")
            check_classifier_verdict(first.verdict)
            if hedging is not None:
                raise ValueError("first cannot go with hedging: a hedged call starts its own")
        from .failover._async import acall

        return await acall(
            self.acquire,
            self._retry_budget,
            fn,
            key=key,
            policy=_DEFAULT_RETRY if retry is None else retry,
            hedging=hedging,
            classify=classify,
            results=results,
            first=first,
        )

    @property
    def retry_budget(self) -> RetryBudget:
        """The budget every retry and hedge of ``call``/``acall`` draws on."""
        return self._retry_budget

    def stats(self) -> BalancerStats:
        """Frozen statistics: each server's (the result maps names to ``ServerStats``, in
        registration order) and the pool's, such as panic, ejections, retries, discovery."""
        try:
            now = self._now()
        except Exception:  # stats are how a broken clock gets diagnosed: never fail for it
            now = self._view.floor + _STEP_BACK  # the latest publication's time
        # No lock: a scrape must never wait for a rebuild, nor a rebuild for a scrape. Each
        # figure is read whole (a copy of a dict whose keys never change, a reference read
        # once); figures published at the same moment may be read a moment apart.
        view = self._view
        tally = self._tally
        ejections = tally.ejections.copy()
        health_changes = tally.health_changes.copy()
        panics, changes = tally.panics, tally.membership_changes
        changed_at = tally.membership_changed_at
        reporters = [r for r in map(_alive, self._reporters) if r is not None]
        effective = dict(zip(view.plan.eligible, view.plan.weights, strict=True))
        unwell = view.unwell
        servers = {
            name: ServerStats.of(e, effective.get(e), now, unwell.get(e, _WELL))
            for name, e in view.endpoints.items()
        }
        return BalancerStats(
            servers,
            eligible=len(view.plan.eligible),
            panic=view.plan.panic,
            panics=panics,
            ejections_total=ejections,
            health_changes=health_changes,
            membership_changes=changes,
            membership_change_age=None if changed_at is None else max(now - changed_at, 0.0),
            retry_budget=self._retry_budget.stats(),
            discovery=tuple(_discovery_status(r, len(servers)) for r in reporters),
        )

    def enable_latency_histogram(self, buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        """Count every server's lease latencies in ``buckets`` (upper bounds, in seconds), for
        ``ServerStats.latency_histogram`` and the metrics exporters.

        Off until called, since each lease then does a little more (see the README's
        "Operating it"). Calling it again with the same buckets does nothing; other buckets
        raise ``ValueError``: the histogram's meaning must not change under its readers.
        """
        bounds = check_buckets(buckets)
        with self._lock:
            if self._buckets is not None:
                if self._buckets != bounds:
                    raise ValueError(
                        f"buckets: the latency histogram is already counted in "
                        f"{list(self._buckets)}, not {list(bounds)}"
                    )
                return
            self._buckets = bounds
            for endpoint in self._view.endpoints.values():
                endpoint.histogram = Histogram(bounds)

    @property
    def latency_buckets(self) -> tuple[float, ...] | None:
        """The latency histogram's bucket bounds in seconds, or None until it is enabled."""
        return self._buckets

    def attach_discovery(self, runner: DiscoveryReporter) -> None:
        """Include ``runner.status`` in ``stats().discovery`` for as long as ``runner`` lives.

        ``Discovery`` and ``AsyncDiscovery`` attach themselves; attaching twice does nothing.
        """
        if not isinstance(getattr(runner, "status", None), DiscoveryStatus):
            raise TypeError(
                f"runner must have a status property giving a DiscoveryStatus, as Discovery "
                f"has, not {type(runner).__name__}"
            )
        try:
            ref = weakref.ref(runner)
        except TypeError:
            raise TypeError(
                f"runner must allow weak references (it is held only while it lives), "
                f"and {type(runner).__name__} does not"
            ) from None
        with self._lock:
            live = [r for r in self._reporters if r() is not None]
            if all(r() is not runner for r in live):
                live.append(ref)
            self._reporters = live  # one assignment: stats() reads the list without the lock

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
