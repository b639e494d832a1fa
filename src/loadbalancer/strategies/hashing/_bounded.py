"""Bounded loads: a key goes to its own server while that server has room, else to the next.

Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018), as HAProxy's
``hash-balance-factor`` and Envoy's ``hash_balance_factor``: with factor ``c`` no server is
admitted a request while it holds ``ceil(c * (total in flight + 1) * weight / total weight)``
or more: its weight's share of ``c`` times the load with this request, which in an unweighted
pool is the paper's ``ceil(c * average)``. A key that finds its server full walks on in the
strategy's own order. A retry walks that order too, skipping the servers it already tried.

For a fixed ``c`` the paper bounds the expected servers a key tries by a constant, so an
admission costs O(1) beside the strategy's own walk: the total in flight is kept as a running
count that endpoints report changes to, never summed per admission.
"""

from __future__ import annotations

import math
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from itertools import filterfalse
from operator import attrgetter
from typing import TypeVar, final

from ..._snapshot import Endpoint, Snapshot
from .._base import Key, Picker
from .._exclude import all_in

__all__ = ["Admission", "BoundedPicker"]

_State = TypeVar("_State")

_in_flight = attrgetter("in_flight")


@final
class _Loads:
    """The requests in flight on one balancer's bounded servers, counted as they change.

    Shared by every picker of the balancer (handed on through ``previous``), so the count
    survives rebuilds. Each tracked endpoint's ``listener`` is ``changed``: the ``setdefault``
    of a dict of endpoints that changed since the last admission, one C call that never blocks
    (an endpoint calls it outside its own lock, and an admission calls ``begin`` while holding
    ``lock``, so a listener that took ``lock`` would deadlock). Admissions, holding ``lock``,
    take those endpoints out and re-read their ``in_flight``: an endpoint that changes again
    meanwhile is marked again, so the count always catches up, and a burst of changes to one
    endpoint costs one re-read. Memory is bounded by the endpoints, not by the changes.

    ``seen`` holds the ``in_flight`` last read of each tracked endpoint and ``total`` their
    sum; both change only under ``lock``. The endpoints tracked are those of the snapshot
    built last (the balancer publishes each picker it builds). Endpoints that are not tracked
    (ejected, removed) still finish their leases: a change they report is ignored.
    """

    __slots__ = ("changed", "lock", "seen", "total", "touched")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.touched: dict[Endpoint, None] = {}
        # One bound method, kept: the identity tells an endpoint's listener is still ours.
        self.changed = self.touched.setdefault
        self.seen: dict[Endpoint, int] = {}
        self.total = 0

    def track(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Count exactly ``endpoints`` from now on, and recount them. O(n), at build time.

        Only the recount, in C, holds ``lock`` (1 to 2 ms at 10,000 servers), so admissions
        wait that long at most while a picker is built.
        """
        changed = self.changed
        for endpoint in endpoints:
            endpoint.listener = changed
        with self.lock:
            # Read after the listener is set: a change that came earlier is in this reading,
            # and a later one marks the endpoint, to be re-read at the next admission.
            left = self.seen
            self.seen = dict(zip(endpoints, map(_in_flight, endpoints), strict=True))
            self.total = sum(self.seen.values())
        # Their changes are ignored from now on; a listener another picker set stays.
        for endpoint in left.keys() - self.seen.keys():
            if endpoint.listener is changed:
                endpoint.listener = None


@final
class Admission:
    """The capacity check of one picker, under a lock shared by all of one balancer's pickers.

    Every admission (read the loads, choose, count the request) happens under the lock, and the
    lock is handed from each picker to the next, so no two admissions ever interleave, even
    across a pool change. Releases decrement without the lock: they only lower loads, so a
    server admitted under capacity stays within the bound computed for that admission.

    An admission costs O(1) plus one step per candidate it tries: the total in flight is a
    running count (see ``_Loads``), brought up to date with the endpoints that changed since
    the previous admission (usually one per lease: its start and its end mark the same
    endpoint). Building one costs O(n).
    """

    __slots__ = ("_count", "_factor", "_loads", "_lock", "_shares")

    def __init__(self, factor: float, snapshot: Snapshot, previous: Picker | None) -> None:
        self._factor = factor
        loads: _Loads = (
            previous._admission._loads
            if isinstance(previous, BoundedPicker) and previous._admission is not None
            else _Loads()
        )
        loads.track(snapshot.endpoints)
        self._loads: _Loads = loads
        self._lock: threading.Lock = loads.lock
        count = self._count = len(snapshot.servers)
        total = math.fsum(snapshot.weights)
        # Equal weights give a share of exactly 1.0, so the capacity is the plain
        # ceil(c * (total + 1) / n) with no rounding surprise; then no share is looked up.
        shares = {
            server: 1.0 if weight * count == total else weight * count / total
            for server, weight in zip(snapshot.servers, snapshot.weights, strict=True)
        }
        self._shares = None if all(share == 1.0 for share in shares.values()) else shares

    def admit(self, candidates: Iterable[str], endpoints: Mapping[str, Endpoint]) -> Endpoint:
        """Count a request on the first candidate under capacity and return its endpoint."""
        lock = self._lock
        # Explicit acquire/release: a with-statement on a Lock costs twice as much in CPython.
        lock.acquire()
        try:
            return self._first_with_room(candidates, endpoints, self._limit())
        finally:
            lock.release()

    def admit_own(
        self,
        own: str,
        order: Callable[[_State], Iterable[str]],
        state: _State,
        endpoints: Mapping[str, Endpoint],
    ) -> Endpoint:
        """``admit(order(state), endpoints)``, where ``own`` is the first server of that order.

        The order is made only if ``own`` is full: a picker that knows the key's own server
        cheaply saves making its walk on every lease (most keys find room at once).
        """
        lock = self._lock
        lock.acquire()
        try:
            limit = self._limit()
            endpoint = endpoints[own]
            shares = self._shares
            if endpoint.in_flight < (limit if shares is None else limit * shares[own]):
                endpoint.begin()
                return endpoint
            return self._first_with_room(order(state), endpoints, limit)
        finally:
            lock.release()

    def _limit(self) -> float:
        """The bound for a share of 1 now: bring the total up to date first. Under the lock."""
        loads = self._loads
        touched = loads.touched
        if touched:
            seen = loads.seen
            total = loads.total
            while touched:
                endpoint = touched.popitem()[0]
                last = seen.get(endpoint)
                if last is not None:
                    now = endpoint.in_flight
                    seen[endpoint] = now
                    total += now - last
            loads.total = total
        return self._factor * (loads.total + 1) / self._count

    def _first_with_room(
        self, candidates: Iterable[str], endpoints: Mapping[str, Endpoint], limit: float
    ) -> Endpoint:
        """Count a request on the first candidate under ``limit`` times its share. Locked."""
        shares = self._shares
        first: Endpoint | None = None
        for server in candidates:
            endpoint = endpoints[server]
            # in_flight is an int, and an int is below ceil(x) exactly when it is below x.
            if endpoint.in_flight < (limit if shares is None else limit * shares[server]):
                endpoint.begin()
                return endpoint
            if first is None:
                first = endpoint
        # Capacities sum to at least c * (total + 1) > total, so some server has room, and
        # the candidates of a first attempt cover every server the picker can return. So
        # this is reached only by a retry whose remaining servers are all full (the first of
        # them: a retry must not go back to a server it tried while another remains), or by
        # a ketama ring whose tiny-weight servers got no point at all (their weight is then
        # under 1/40 of the mean) with c very close to 1: the key's own server then.
        assert first is not None
        first.begin()
        return first


class BoundedPicker(Picker):
    """A hashing picker whose lease path can bound loads (``balance_factor``).

    ``servers`` are the distinct servers a key can map to: those ``candidates`` yields.
    ``unplaced`` are the pool's other servers, in name order (a ketama ring gives a server of
    tiny weight no point): a retry takes the first of them not tried once every server of
    ``servers`` has been tried, rather than go back to one.
    """

    __slots__ = ("_admission", "_reachable", "_unplaced")

    def __init__(
        self,
        admission: Admission | None,
        servers: tuple[str, ...],
        unplaced: tuple[str, ...] = (),
    ) -> None:
        self._admission = admission
        self._reachable = servers
        self._unplaced = unplaced

    @abstractmethod
    def candidates(self, key: Key | None) -> Iterator[str]:
        """The servers in the order ``key`` prefers them, each once, its own server first."""

    def excludes_all(self, exclude: Set[str]) -> bool:
        """Whether ``exclude`` names every server a key can map to."""
        return all_in(exclude, self._reachable)

    def unplaced_not_in(self, exclude: Set[str]) -> str | None:
        """The first server no key maps to that is not in ``exclude``, if there is one."""
        return next(filterfalse(exclude.__contains__, self._unplaced), None)

    def acquire_is_pick(self) -> bool:
        """Without a balance factor, a lease is a plain pick: the balancer runs it inline."""
        return self._admission is None

    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        """Pick and count a request; with a balance factor, skip servers at capacity.

        With ``exclude``, admission walks the key's order over the servers not in it (all of
        them if every one is excluded), so a retry of a key goes to the first server after
        those it tried that has room.
        """
        admission = self._admission
        if admission is None:
            return super().acquire(key, endpoints, exclude)
        candidates = self.candidates(key)
        if exclude:
            if not self.excludes_all(exclude):
                candidates = filterfalse(exclude.__contains__, candidates)
            elif (spare := self.unplaced_not_in(exclude)) is not None:
                candidates = iter((spare,))
        return admission.admit(candidates, endpoints)
