"""Test doubles and checks for code that uses ``loadbalancer``, and for custom strategies.

* ``FakeClock``: a clock that moves only when told; inject it as a balancer's ``clock=`` and,
  through ``FakeClock.sleep``, wherever code takes a ``sleep=``.
* ``VirtualTimeLoop`` and ``run``: an asyncio event loop on virtual time, so code that sleeps
  or times out (``asyncio.sleep``, ``asyncio.wait_for``, ``asyncio.wait(timeout=)``) runs at
  once and at exactly the times it asked for.
* ``check_strategy``: the conformance checks every ``Strategy`` must pass, for authors of
  custom strategies to run on theirs; ``STRATEGY_CHECKS`` names them one by one.
* ``local_replicas``: small HTTP servers on 127.0.0.1, to try the HTTP integrations on.

Importing this module loads no networking module: asyncio is imported on first use of
``VirtualTimeLoop`` or ``run``, and ``http.server`` on first use of ``local_replicas``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._balancer import LoadBalancer
from ._errors import NoServersAvailableError
from ._snapshot import Endpoint, Snapshot
from ._validation import check_callable, check_number
from .strategies._base import Picker, Strategy

if TYPE_CHECKING:
    import asyncio

    from _typeshed import FileDescriptorLike

    from ._local_replicas import LocalReplicas

__all__ = [
    "STRATEGY_CHECKS",
    "FakeClock",
    "StrategyCheck",
    "StrategyFactory",
    "VirtualTimeLoop",
    "check_strategy",
    "local_replicas",
    "run",
]

_T = TypeVar("_T")


# -- a clock that moves only when told ---------------------------------------------------------


class FakeClock:
    """A clock for tests: call it to read the time, ``advance`` or ``sleep`` to move it.

    ``now`` is the reading, in seconds from an arbitrary origin (``start``). It never moves on
    its own, so tests of timeouts, ejections and slow start are exact and take no real time.
    ``set`` may also step it back, as a wall clock does when NTP corrects it: use that to test
    code that must survive a clock that is not monotonic.
    """

    __slots__ = ("_lock", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = check_number(start, "start")
        self._lock = threading.Lock()  # advance is read-modify-write; tests share clocks

    def __call__(self) -> float:
        """The current reading."""
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new reading."""
        step = check_number(seconds, "seconds", at_least=0)
        with self._lock:
            self.now += step
            return self.now

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` instead of waiting: a drop-in for ``time.sleep``."""
        self.advance(seconds)

    def set(self, now: float) -> None:
        """Set the reading to ``now``, even an earlier one (a wall clock stepped back)."""
        reading = check_number(now, "now")
        with self._lock:
            self.now = reading

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


# -- an event loop on virtual time ---------------------------------------------------------------

if TYPE_CHECKING:

    class VirtualTimeLoop(asyncio.SelectorEventLoop):
        """An asyncio event loop whose clock is virtual: it jumps to the next timer when idle.

        When no callback is ready and no I/O is pending, a real loop sleeps until its next
        timer; this one sets its clock to that timer's deadline instead, exactly, and goes on.
        ``asyncio.sleep(3600)`` therefore returns at once with ``loop.time()`` 3600 later, and
        ``wait_for`` timeouts fire at precisely their deadlines. Real I/O still works (the
        selector is polled without waiting), with one consequence of time being virtual:
        while a timer is scheduled, I/O that is not ready yet waits for nobody, so a timeout
        around a real socket or thread fires before it answers. With no timer at all the loop
        blocks on real I/O as usual (the self-pipe of ``call_soon_threadsafe`` included).

        ``time()`` starts at ``start``; pass ``loop.time`` as a balancer's or health checker's
        ``clock=`` to share the virtual clock.
        """

        def __init__(self, start: float = 0.0) -> None: ...

        def time(self) -> float:
            """The virtual time, in seconds."""
            ...

        def advance(self, seconds: float) -> None:
            """Move virtual time forward by ``seconds`` (>= 0); timers now due run next."""
            ...


def _define_virtual_time_loop() -> type[VirtualTimeLoop]:
    """Create the ``VirtualTimeLoop`` class: asyncio is imported here, on first use."""
    import asyncio
    import selectors

    class _VirtualSelector(selectors.BaseSelector):
        """A real selector, polled without waiting; an idle wait advances virtual time instead."""

        def __init__(self, advance: Callable[[float], None]) -> None:
            self._real = selectors.DefaultSelector()
            self._advance = advance

        def register(
            self, fileobj: FileDescriptorLike, events: int, data: Any = None
        ) -> selectors.SelectorKey:
            return self._real.register(fileobj, events, data)

        def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
            return self._real.unregister(fileobj)

        def modify(
            self, fileobj: FileDescriptorLike, events: int, data: Any = None
        ) -> selectors.SelectorKey:
            return self._real.modify(fileobj, events, data)

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None:  # no timer to jump to: only real I/O can wake the loop
                return self._real.select(None)
            ready = self._real.select(0)
            if not ready and timeout > 0:
                self._advance(timeout)
            return ready

        def close(self) -> None:
            self._real.close()

        def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
            return self._real.get_key(fileobj)

        def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
            return self._real.get_map()

    class _VirtualTimeLoop(asyncio.SelectorEventLoop):
        __doc__ = _LOOP_DOC

        def __init__(self, start: float = 0.0) -> None:
            self._virtual_now = 0.0
            super().__init__(_VirtualSelector(self.advance))
            try:  # checked only now: a loop half made would complain when collected
                self._virtual_now = check_number(start, "start")
            except BaseException:
                self.close()
                raise

        def time(self) -> float:
            """The virtual time, in seconds."""
            return self._virtual_now

        def advance(self, seconds: float) -> None:
            """Move virtual time forward by ``seconds`` (>= 0); timers now due run next."""
            # The loop waits (deadline - now) for its next timer, and in binary floating point
            # now + (deadline - now) is the deadline again (barring a rounding tie, possible
            # only for a deadline some 2**52 times now): timers fire at exactly their time.
            self._virtual_now += check_number(seconds, "seconds", at_least=0)

    _VirtualTimeLoop.__name__ = _VirtualTimeLoop.__qualname__ = "VirtualTimeLoop"
    _VirtualTimeLoop.__module__ = __name__
    return _VirtualTimeLoop  # type: ignore[return-value]  # the stub above describes it


_LOOP_DOC = """An asyncio event loop whose clock is virtual: it jumps to the next timer when idle.

When no callback is ready and no I/O is pending, a real loop sleeps until its next timer; this
one sets its clock to that timer's deadline instead, exactly, and goes on.
``asyncio.sleep(3600)`` therefore returns at once with ``loop.time()`` 3600 later, and
``wait_for`` timeouts fire at precisely their deadlines. Real I/O still works (the selector is
polled without waiting), with one consequence of time being virtual: while a timer is
scheduled, I/O that is not ready yet waits for nobody, so a timeout around a real socket or
thread fires before it answers. With no timer at all the loop blocks on real I/O as usual (the
self-pipe of ``call_soon_threadsafe`` included).

``time()`` starts at ``start``; pass ``loop.time`` as a balancer's or health checker's
``clock=`` to share the virtual clock.
"""


def _loop_class() -> type[VirtualTimeLoop]:
    """``VirtualTimeLoop``, defined on the first call."""
    cls: type[VirtualTimeLoop] | None = globals().get("VirtualTimeLoop")
    if cls is None:
        cls = _define_virtual_time_loop()
        globals()["VirtualTimeLoop"] = cls  # later lookups find it without __getattr__
    return cls


def __getattr__(name: str) -> object:
    """Define ``VirtualTimeLoop`` on first access, importing asyncio only then (PEP 562)."""
    if name == "VirtualTimeLoop":
        return _loop_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(coro: Coroutine[Any, Any, _T], *, start: float = 0.0) -> _T:
    """Run ``coro`` on a fresh ``VirtualTimeLoop`` starting at ``start``, close it, return.

    The counterpart of ``asyncio.run``: tasks still running at the end are cancelled, async
    generators and the default executor are shut down, and the loop is closed.
    """
    loop = _loop_class()(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            # No timeout: in virtual time a join timeout would expire at once.
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on ``loop`` and let them finish, as ``asyncio.run`` does."""
    import asyncio

    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during loadbalancer.testing.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


# -- conformance checks for strategies ----------------------------------------------------------

StrategyFactory = Callable[[], Strategy]
"""A function returning a fresh strategy instance, such as ``lambda: MyStrategy(seed=1)``."""

StrategyCheck = Callable[[StrategyFactory], None]
"""One conformance check: it raises ``AssertionError`` saying what went wrong, or returns."""

_POOL = ("a", "b", "c", "d")
_PICKS = 400  # enough that a server a fair strategy never picks in 400 tries is a bug
_BAD_KEYS: tuple[object, ...] = (42, 1.5, object(), ["a"], ("a",))


def _expect(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition``; not ``assert``, which ``python -O`` drops."""
    if not condition:
        raise AssertionError(message)


def _balancer(make: StrategyFactory, *servers: str) -> LoadBalancer:
    """A balancer over ``servers``, registered one by one (each a separate build)."""
    lb = LoadBalancer(make(), max_servers=max(10, len(servers)))
    for server in servers:
        _expect(lb.register(server), f"register({server!r}) returned False")
    return lb


def _outside(picks: Collection[str], pool: Collection[str]) -> list[str]:
    return sorted(set(picks) - set(pool))


def _expect_members(lb: LoadBalancer, members: Collection[str], when: str, count: int) -> None:
    """``count`` picks through ``get()``, ``get(key)`` and ``lease(key)`` are all ``members``."""
    plain = [lb.get() for _ in range(count)]
    keyed = [lb.get(f"k{i}") for i in range(count)]
    for call, picks in (("get()", plain), ("get(key)", keyed)):
        outside = _outside(picks, members)
        _expect(not outside, f"{when}, {call} returned {outside}, not in the pool {members}")
    for i in range(count):
        try:
            lease = lb.lease(f"k{i}")
        except KeyError as error:  # the lease path looks the server up among the pool's
            raise AssertionError(
                f"{when}, lease(key) failed on a server not in the pool: {error}"
            ) from error
        with lease as server:
            _expect(server in members, f"{when}, lease(key) gave {server!r}, not in {members}")


def _check_empty_pool(make: StrategyFactory) -> None:
    """An empty pool raises ``NoServersAvailableError``, before and after having servers."""
    lb = LoadBalancer(make())
    for when in ("before any register()", "after the last unregister()"):
        for call, pick in (("get()", lb.get), ("lease()", lb.lease)):
            try:
                pick()
            except NoServersAvailableError:
                pass
            else:
                raise AssertionError(f"{call} on an empty pool {when} did not raise")
        lb.register("a")
        lb.unregister("a")


def _check_single_server(make: StrategyFactory) -> None:
    """A pool of one server always picks it, with or without a key."""
    _expect_members(_balancer(make, "only"), ["only"], "in a pool of one", 60)


def _check_members(make: StrategyFactory) -> None:
    """Every pick is a current pool member, through register, unregister and replace."""
    lb = _balancer(make, *_POOL)
    pool = list(_POOL)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("registering a, b, c, d", lambda: None),
        ("unregister('b')", lambda: lb.unregister("b")),
        ("register('e')", lambda: lb.register("e")),
        ("replace(['c', 'x', 'y'])", lambda: lb.replace(["c", "x", "y"])),
        ("replace({'y': 1, 'z': 3})", lambda: lb.replace({"y": 1, "z": 3})),
    ]
    pools = [pool, ["a", "c", "d"], ["a", "c", "d", "e"], ["c", "x", "y"], ["y", "z"]]
    for (step, change), members in zip(steps, pools, strict=True):
        change()
        _expect_members(lb, members, f"after {step}", _PICKS)


def _check_reach(make: StrategyFactory) -> None:
    """Every server is picked in time, also one just registered, also after ``replace``."""
    lb = _balancer(make, *_POOL)
    steps: list[tuple[str, Callable[[], object], set[str]]] = [
        ("registering a, b, c, d", lambda: None, set(_POOL)),
        ("register('e')", lambda: lb.register("e"), {*_POOL, "e"}),
        ("replace(['c', 'x'])", lambda: lb.replace(["c", "x"]), {"c", "x"}),
    ]
    for step, change, members in steps:
        change()
        for kind, picks in (
            ("get()", [lb.get() for _ in range(_PICKS)]),
            ("get(key) with distinct keys", [lb.get(f"key-{i}") for i in range(_PICKS)]),
        ):
            missing = sorted(members - set(picks))
            _expect(
                not missing,
                f"after {step}, {_PICKS} calls of {kind} never picked {missing}; "
                "skip 'reach' if the strategy means to leave servers idle (active/standby)",
            )


def _check_keys(make: StrategyFactory) -> None:
    """A key that is not ``str`` or ``bytes`` raises ``TypeError``; ``str`` and ``bytes`` work."""
    lb = _balancer(make, *_POOL)
    for key in ("user-1", b"user-1", ""):
        with lb.lease(key) as leased:
            pass
        for call, server in (
            (f"get({key!r})", lb.get(key)),
            (f"get(key={key!r})", lb.get(key=key)),
            (f"lease({key!r})", leased),
        ):
            _expect(server in _POOL, f"{call} returned {server!r}, not a pool member")
    calls: tuple[tuple[str, Callable[[Any], object]], ...] = (("get", lb.get), ("lease", lb.lease))
    before = _in_flight(lb)
    for bad in _BAD_KEYS:
        for call, pick in calls:
            try:
                pick(bad)
            except TypeError:
                continue
            except Exception as error:
                raise AssertionError(
                    f"{call}({bad!r}) raised {type(error).__name__}, not TypeError: {error}"
                ) from error
            raise AssertionError(f"{call}({bad!r}) returned instead of raising TypeError")
    after = _in_flight(lb)
    _expect(after == before, f"leases refused for their key stayed in flight: {after}")


def _in_flight(lb: LoadBalancer) -> dict[str, int]:
    return {name: s.in_flight for name, s in lb.stats().items() if s.in_flight}


def _snapshot(*servers: str) -> Snapshot:
    return Snapshot.of(tuple(Endpoint(s) for s in servers), FakeClock())


def _check_rebuild(make: StrategyFactory) -> None:
    """``build`` given its own previous picker returns a picker over the new snapshot only."""
    strategy = make()
    first = strategy.build(_snapshot(*_POOL))
    for _ in range(10):
        first.pick()
    second = strategy.build(_snapshot("a", "c", "e"), first)
    picks = [second.pick() for _ in range(_PICKS)]
    outside = _outside(picks, ["a", "c", "e"])
    _expect(not outside, f"a picker rebuilt over a, c, e from its previous picked {outside}")


def _check_shared_instance(make: StrategyFactory) -> None:
    """One strategy instance serves two balancers, each picking from its own pool only."""
    strategy = make()
    first = LoadBalancer(strategy)
    second = LoadBalancer(strategy)
    first.replace(["a", "b"])
    second.replace(["y", "z"])
    first.register("c")
    for lb, members in ((first, ["a", "b", "c"]), (second, ["y", "z"])):
        _expect_members(lb, members, "with one strategy shared by two balancers", 60)


def _exact_exclusion(make: StrategyFactory) -> bool:
    """Whether the strategy's picker chooses among servers not excluded, or only re-picks.

    ``Picker.pick_excluding``'s default picks again a few times and then takes what it gets
    (best effort, as Envoy's previous-hosts predicate); a picker that overrides it claims the
    exact choice, and is held to it.
    """
    picker = make().build(_snapshot(*_POOL))
    return type(picker).pick_excluding is not Picker.pick_excluding


def _check_exclusion(make: StrategyFactory) -> None:
    """``get(exclude=)`` and ``lease(exclude=)`` avoid the servers already tried.

    While a server outside ``exclude`` remains, none in it is returned (for pickers with their
    own ``pick_excluding``; the default is best effort); with every server excluded, a pool
    member still is. Names in ``exclude`` that are not in the pool are ignored.
    """
    exact = _exact_exclusion(make)
    subsets = [
        {s for i, s in enumerate(_POOL) if mask >> i & 1} for mask in range(1, 2 ** len(_POOL))
    ]
    weighted = LoadBalancer(make())
    weighted.replace({server: n for n, server in enumerate(_POOL, 1)})
    for lb, pool in ((_balancer(make, *_POOL), "a, b, c, d"), (weighted, "weights 1-4")):
        for excluded in subsets:
            remaining = [s for s in _POOL if s not in excluded]
            for extra in ((), ("not-a-member",)):
                exclude = sorted({*excluded, *extra})
                for i in range(12):
                    key = None if i % 2 else f"key-{i}"
                    with lb.lease(key, exclude=exclude) as leased:
                        pass
                    for call, server in (
                        (f"get({key!r}, exclude={exclude})", lb.get(key, exclude=exclude)),
                        (f"get({key!r}, exclude={set(exclude)})", lb.get(key, set(exclude))),
                        (f"lease({key!r}, exclude={exclude})", leased),
                    ):
                        where = f"over {pool}, {call}"
                        _expect(server in _POOL, f"{where} returned {server!r}, not a member")
                        _expect(
                            not (exact and remaining and server in excluded),
                            f"{where} returned excluded {server!r} while {remaining} remained",
                        )
        _expect(not _in_flight(lb), f"leases with exclude= stayed in flight: {_in_flight(lb)}")


def _check_threads(make: StrategyFactory) -> None:
    """Leases from 8 threads at once: picks are members, and every count comes out exact."""
    threads, cycles = 8, 500
    lb = _balancer(make, *_POOL)
    start = threading.Barrier(threads, timeout=60)  # all at once: contention is the point
    problems: list[str] = []

    def work(number: int) -> None:
        try:
            start.wait()
            for i in range(cycles):
                with lb.lease(f"key-{number}-{i}" if i % 2 else None) as server:
                    if server not in _POOL:
                        problems.append(f"lease() gave {server!r}, not a pool member")
                server = lb.get()
                if server not in _POOL:
                    problems.append(f"get() returned {server!r}, not a pool member")
        except Exception as error:  # reported below, on the test's thread
            problems.append(f"thread {number} raised {type(error).__name__}: {error}")

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    _expect(not any(w.is_alive() for w in workers), "a thread was still running after 60 s")
    _expect(not problems, f"{len(problems)} problems, the first: {problems[:1]}")
    stats = lb.stats().values()
    _expect(not _in_flight(lb), f"every lease ended, yet in flight: {_in_flight(lb)}")
    total = threads * cycles
    for counter in ("picks", "successes"):
        counted = sum(getattr(s, counter) for s in stats)
        _expect(counted == total, f"{total} leases ended, but {counter} add up to {counted}")
    _expect(sum(s.failures for s in stats) == 0, "leases that succeeded counted as failures")


STRATEGY_CHECKS: Mapping[str, StrategyCheck] = MappingProxyType(
    {
        "empty_pool": _check_empty_pool,
        "single_server": _check_single_server,
        "members": _check_members,
        "reach": _check_reach,
        "keys": _check_keys,
        "rebuild": _check_rebuild,
        "shared_instance": _check_shared_instance,
        "exclusion": _check_exclusion,
        "threads": _check_threads,
    }
)
"""The checks ``check_strategy`` runs, by name, in order; each takes a strategy factory."""


def check_strategy(make_strategy: StrategyFactory, *, skip: Collection[str] = ()) -> None:
    """Run every check of ``STRATEGY_CHECKS`` on fresh strategies from ``make_strategy``.

    Raise ``AssertionError`` naming the first check that fails and what it saw. ``skip``
    names checks that do not apply, such as ``"reach"`` for an active/standby strategy that
    leaves servers idle on purpose. Run it from a test: ``check_strategy(MyStrategy)``.
    """
    check_callable(make_strategy, "make_strategy")
    if isinstance(skip, str) or not isinstance(skip, Collection):
        raise TypeError(f"skip must be a collection of check names, not {type(skip).__name__}")
    unknown = sorted(set(skip) - set(STRATEGY_CHECKS))
    if unknown:
        raise ValueError(f"skip names no such check: {unknown} (checks: {list(STRATEGY_CHECKS)})")
    sample = make_strategy()
    if not isinstance(sample, Strategy):
        raise TypeError(f"make_strategy must return a Strategy, not {type(sample).__name__}")
    for name, check in STRATEGY_CHECKS.items():
        if name in skip:
            continue
        try:
            check(make_strategy)
        except AssertionError as error:
            raise AssertionError(f"{sample!r} fails check {name!r}: {error}") from error
        except Exception as error:
            raise AssertionError(
                f"{sample!r} fails check {name!r}: raised {type(error).__name__}: {error}"
            ) from error


# -- HTTP replicas to try the integrations on --------------------------------------------------


def local_replicas(n: int = 3) -> LocalReplicas:
    """Start ``n`` small HTTP servers on free ports of 127.0.0.1 (``with`` stops them).

    Each answers every method and path with 200 and JSON naming itself (``served_by``, also
    in an ``X-Served-By`` header), ``/status/N`` with status N, and ``/events?count=N`` with a
    stream of N server-sent events. ``.addresses`` lists them for a balancer; ``.stop(a)``
    takes one down mid-run (new connections to it are then refused).
    """
    from ._local_replicas import LocalReplicas

    return LocalReplicas(n)
