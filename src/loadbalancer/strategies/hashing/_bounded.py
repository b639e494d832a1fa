"""Bounded loads: a key goes to its own server while that server has room, else to the next.

Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018), as HAProxy's
``hash-balance-factor`` and Envoy's ``hash_balance_factor``: with factor ``c`` no server is
admitted a request while it holds ``ceil(c * (total in flight + 1) * share)`` or more, where
``share`` is its weight over the mean weight (1 in an unweighted pool, which gives the paper's
``ceil(c * average)``). A key that finds its server full walks on in the strategy's own order.
A retry walks that order too, skipping the servers it already tried.
"""

from __future__ import annotations

import math
import threading
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Set
from itertools import filterfalse
from typing import final

from ..._snapshot import Endpoint, Snapshot
from .._base import Key, Picker
from .._exclude import all_in

__all__ = ["Admission", "BoundedPicker"]


@final
class Admission:
    """The capacity check of one picker, under a lock shared by all of one balancer's pickers.

    Every admission (read the loads, choose, count the request) happens under the lock, and the
    lock is handed from each picker to the next, so no two admissions ever interleave, even
    across a pool change. Releases decrement without the lock: they only lower loads, so a
    server admitted under capacity stays within the bound computed for that admission.
    """

    __slots__ = ("_factor", "_lock", "_servers", "_shares")

    def __init__(self, factor: float, snapshot: Snapshot, previous: Picker | None) -> None:
        self._factor = factor
        self._lock: threading.Lock = (
            previous._admission._lock
            if isinstance(previous, BoundedPicker) and previous._admission is not None
            else threading.Lock()
        )
        self._servers = snapshot.servers
        count = len(snapshot.servers)
        total = math.fsum(snapshot.weights)
        # Equal weights give a share of exactly 1.0, so the capacity is the plain
        # ceil(c * (total + 1) / n) with no rounding surprise.
        self._shares = {
            server: 1.0 if weight * count == total else weight * count / total
            for server, weight in zip(snapshot.servers, snapshot.weights, strict=True)
        }

    def admit(self, candidates: Iterable[str], endpoints: Mapping[str, Endpoint]) -> Endpoint:
        """Count a request on the first candidate under capacity and return its endpoint."""
        shares = self._shares
        with self._lock:
            total = sum(endpoints[server].in_flight for server in self._servers)
            limit = self._factor * (total + 1) / len(self._servers)
            first: Endpoint | None = None
            for server in candidates:
                endpoint = endpoints[server]
                if endpoint.in_flight < math.ceil(limit * shares[server]):
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
