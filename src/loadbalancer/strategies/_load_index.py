"""An exact index of endpoints by HAProxy's leastconn key, ``(load + 1) / weight``.

Least connections picks a server minimising ``(load + 1) / weight``, ties broken uniformly at
random. Scanning the pool for it is O(n) per pick; this index keeps the answer ready instead.

Endpoints are grouped by weight (a *class*); inside a class, by integer load (a *bucket*:
a list of server names, and each one's position in it, so that a move is a swap-remove and
an append).
For one weight the key grows with the load, so a class's candidates are its bucket of least
load, and the pool's are the least buckets of the classes whose key is the smallest: ``best``
(``single`` when there is one). Endpoints report every change of load through
``Endpoint.listener``; a class's least load is tracked in O(1) per change, as loads rise one at
a time (they may fall further, when a success clears failures in a row, which only lowers
the least to the new load).

Ownership: one picker owns an index at a time. A rebuild hands the index over to the new
picker, applying only what changed, so the previous picker stops owning it first; a picker
that finds itself no longer the owner after reading the index falls back to scanning its own
snapshot. A reader that saw ``owner`` unchanged after its read therefore read the index as it
was for its own snapshot.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence, Set
from heapq import heapify, heappop, heappush

from .._snapshot import Endpoint
from ._draw import draw_width
from ._exclude import REDRAWS

__all__ = ["SMALLEST_WEIGHT", "Bits", "LoadIndex", "draw_below"]

Bits = Callable[[int], int]
"""``random.Random.getrandbits`` of the strategy's rng."""

SMALLEST_WEIGHT = 2.0**-960
"""The smallest weight the index takes: ``(load + 1) / weight`` then stays finite for any load
below 2**63, so keys of one weight never tie at infinity (a scan treats those as equal)."""


def draw_below(bits: Bits, count: int) -> int:
    """A uniform integer in ``[0, count)``, exactly: getrandbits with rejection (none for 1)."""
    if count == 1:
        return 0
    width, limit = draw_width(count)
    draw = bits(width)
    while draw >= limit:
        draw = bits(width)
    return draw % count


class _Class:
    """The indexed servers of one weight, in buckets by indexed load."""

    __slots__ = ("best", "buckets", "key", "least", "order", "weight")

    def __init__(self, weight: float, order: int) -> None:
        self.weight = weight
        # Server names, not endpoints: a pick returns one without touching its endpoint.
        self.buckets: dict[int, list[str]] = {}
        self.least = 0  # the least key of buckets; buckets are never empty
        # (least + 1) / weight as last ranked; None once the class is gone. A heap entry
        # (key, order, class) is current while its key is the class's.
        self.key: float | None = None
        self.order = order  # breaks ties between heap entries, so classes are never compared
        self.best = False  # whether its least bucket is in the index's ``best``


class _Entry:
    """Where one endpoint sits: its class, the load it is indexed at, its place in the bucket."""

    __slots__ = ("cls", "endpoint", "load", "slot")

    def __init__(self, cls: _Class, endpoint: Endpoint) -> None:
        self.cls = cls
        self.endpoint = endpoint
        self.load = 0
        self.slot = 0


def _prefix(old: Sequence[object], new: Sequence[object]) -> int:
    """Length of the common prefix of ``old`` and ``new``, items compared by identity/equality.

    Slices compared in C, halving: about two passes over the shorter sequence, with no
    Python step per item.
    """
    size = min(len(old), len(new))
    if old[:size] == new[:size]:
        return size
    low, high = 0, size  # old[:low] == new[:low], old[:high] != new[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if old[low:middle] == new[low:middle]:
            low = middle
        else:
            high = middle
    return low


def _suffix(old: Sequence[object], new: Sequence[object]) -> int:
    """Length of the common suffix of ``old`` and ``new``, as ``_prefix`` finds prefixes."""
    size = min(len(old), len(new))
    old_end, new_end = len(old), len(new)
    if old[old_end - size :] == new[new_end - size :]:
        return size
    low, high = 0, size  # the last low items agree, the last high do not
    while high - low > 1:
        middle = (low + high) // 2
        if old[old_end - middle : old_end - low] == new[new_end - middle : new_end - low]:
            low = middle
        else:
            high = middle
    return low


# Every live index, so that fork() waits for any update in progress (see _hold_for_fork).
_indexes: weakref.WeakSet[LoadIndex] = weakref.WeakSet()
_held_for_fork: list[threading.Lock] = []


def _hold_for_fork() -> None:
    """Take every index's lock before fork(): a child never starts with one held, mid-update.

    No index lock is held while waiting for another lock, so this cannot deadlock.
    """
    while True:
        try:
            locks = [index._lock for index in _indexes]
            break
        except RuntimeError:  # another thread made an index meanwhile: look again
            continue
    for lock in locks:
        lock.acquire()
    _held_for_fork[:] = locks


def _release_after_fork() -> None:
    """Release what ``_hold_for_fork`` took, in the parent and in the child alike."""
    for lock in _held_for_fork:
        lock.release()
    _held_for_fork.clear()


if hasattr(os, "register_at_fork"):  # POSIX only: elsewhere nothing forks
    os.register_at_fork(
        before=_hold_for_fork,
        after_in_parent=_release_after_fork,
        after_in_child=_release_after_fork,
    )


class LoadIndex:
    """Endpoints indexed by ``(load + 1) / weight``, for least-connections picks in O(1).

    Thread safety: every change is made under the index's own lock (``update`` runs on the
    threads that begin and end leases, builds on the balancer's). ``single``, ``best`` and
    ``owner`` may be read without it, optimistically: a bucket may be a moment stale, or
    empty, and the reader checks ``owner`` after its read (see the module docstring).

    Cost: ``update`` is O(1), plus O(log distinct weights) when it changes the least load of
    a class (a heap of the classes' keys, so slow start, which gives servers weights of their
    own, stays cheap); a handover is O(servers between the first and the last that changed)
    beyond a few C-level passes over the snapshots.
    """

    __slots__ = (
        "__weakref__",
        "_classes",
        "_entries",
        "_heap",
        "_lock",
        "_lowest",
        "_orders",
        "_tied",
        "best",
        "listener",
        "owner",
        "single",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _indexes.add(self)
        self._entries: dict[str, _Entry] = {}  # by server: names are unique in a snapshot
        self._classes: dict[float, _Class] = {}
        self._heap: list[tuple[float, int, _Class]] = []
        self._lowest = math.inf  # the key of ``best``
        self._orders = itertools.count()
        self._tied: list[_Class] = []  # the classes whose least buckets ``best`` holds
        self.best: tuple[list[str], ...] = ()
        """The least bucket of each class whose key is the smallest."""
        self.single: list[str] | None = None
        """``best[0]`` when ``best`` holds one bucket, else None."""
        self.owner: object = None
        """The picker this index serves; None once another index took its endpoints."""
        # One bound method, set on the endpoints and compared by identity to tell ours.
        self.listener: Callable[[Endpoint], None] = self.update

    # -- the listener ------------------------------------------------------------------------

    def update(self, endpoint: Endpoint) -> None:
        """Move ``endpoint`` to the bucket of its current load: its ``Endpoint.listener``.

        Reads ``endpoint.load`` itself under the index's lock, so racing calls leave the index
        at the last value. Endpoints not indexed (ejected, gone) are ignored. O(1), plus
        O(distinct weights) when the least load of the endpoint's class changes.
        """
        lock = self._lock
        lock.acquire()
        try:
            name = endpoint.server
            entry = self._entries.get(name)
            if entry is None or entry.endpoint is not endpoint:
                return  # not indexed, or gone and registered again under its name
            load = endpoint.load
            old = entry.load
            if load == old:
                return
            cls = entry.cls
            buckets = cls.buckets
            # _take and _put, inlined: this runs twice per lease.
            bucket = buckets[old]
            last = bucket.pop()
            if last is not name:  # the bucket holds the endpoint's own str: identity suffices
                slot = entry.slot
                bucket[slot] = last
                self._entries[last].slot = slot
            elif not bucket:
                del buckets[old]
            entry.load = load
            target = buckets.get(load)
            if target is None:
                entry.slot = 0
                buckets[load] = [name]
            else:
                entry.slot = len(target)
                target.append(name)
            least = cls.least
            if load < least:
                cls.least = load
                self._moved(cls)
            elif old == least and not bucket:
                # Loads rise one at a time, so the next bucket is at most a few steps up
                # (racing changes), and there is one: the endpoint's own, at ``load``.
                least += 1
                while least not in buckets:
                    least += 1
                cls.least = least
                self._moved(cls)
        finally:
            lock.release()

    # -- picks (read by the picker; the locked and the retry path live here) -----------------

    def choose(self, bits: Bits) -> str:
        """A least server under the lock, every tied server equally likely. O(tied classes)."""
        with self._lock:
            best = self.best
            at = draw_below(bits, sum(map(len, best)))
            for bucket in best[:-1]:
                if at < len(bucket):
                    return bucket[at]
                at -= len(bucket)
            return best[-1][at]

    def choose_excluding(self, bits: Bits, exclude: Set[str]) -> str | None:
        """A least server not in ``exclude``; None if every one is.

        Ties are uniform over all tied servers not excluded. O(excluded + distinct weights),
        plus O(distinct loads) per bucket skipped for holding only excluded servers; a bucket
        mostly excluded may be walked once (after ``REDRAWS`` rejected draws).
        """
        with self._lock:
            excluded: dict[_Class, dict[int, int]] = {}
            for server in exclude:
                entry = self._entries.get(server)
                if entry is not None:
                    counts = excluded.setdefault(entry.cls, {})
                    counts[entry.load] = counts.get(entry.load, 0) + 1
            lowest = math.inf
            tied: list[tuple[list[str], int]] = []
            for cls in self._classes.values():
                counts = excluded.get(cls, {})
                buckets = cls.buckets
                load: int | None = cls.least
                while load is not None and counts.get(load, 0) == len(buckets[load]):
                    above = [other for other in buckets if other > load]
                    load = min(above) if above else None
                if load is None:
                    continue  # the whole class is excluded
                key = (load + 1) / cls.weight
                if key < lowest:
                    lowest, tied = key, [(buckets[load], counts.get(load, 0))]
                elif key == lowest:
                    tied.append((buckets[load], counts.get(load, 0)))
            if not tied:
                return None
            at = draw_below(bits, sum(len(bucket) - skip for bucket, skip in tied))
            for bucket, skip in tied[:-1]:
                if at < len(bucket) - skip:
                    break
                at -= len(bucket) - skip
            else:
                bucket, skip = tied[-1]
            if not skip:  # the draw is uniform over this bucket too
                return bucket[at]
            return self._uniform_not_in(bucket, bits, exclude)

    @staticmethod
    def _uniform_not_in(bucket: list[str], bits: Bits, exclude: Set[str]) -> str:
        """A uniform server of ``bucket`` not in ``exclude`` (one at least is not)."""
        # Rejection stays uniform and costs a draw or two unless most are excluded.
        for _ in range(REDRAWS):
            server = bucket[draw_below(bits, len(bucket))]
            if server not in exclude:
                return server
        free = [server for server in bucket if server not in exclude]
        return free[draw_below(bits, len(free))]

    # -- building and handing over -----------------------------------------------------------

    def fill(self, owner: object, endpoints: Sequence[Endpoint], weights: Sequence[float]) -> None:
        """Index ``endpoints`` (an empty index) for ``owner``, taking over their listeners.

        An index that held one of them stops owning anything, so its picker scans. O(n).
        """
        displaced: set[Callable[[Endpoint], object]] = set()
        with self._lock:
            self.owner = owner
            for endpoint, weight in zip(endpoints, weights, strict=True):
                previous = self._add(endpoint, weight)
                if previous is not None:
                    displaced.add(previous)
            for cls in self._classes.values():
                cls.least = min(cls.buckets)
            self._rank()
        _retire(displaced, self)

    def hand_over(
        self,
        previous: object,
        owner: object,
        old: tuple[Sequence[Endpoint], Sequence[float]],
        new: tuple[Sequence[Endpoint], Sequence[float]],
    ) -> bool:
        """Re-index for ``owner`` the changes from snapshot ``old`` to ``new``; False if not ours.

        ``previous`` must own the index, indexing ``old`` (endpoints and weights); else
        nothing changes. Endpoints that left are unindexed and their listener cleared (if
        still ours); those that came take our listener before their load is read, under the
        lock, so no change of theirs is missed. O(servers between the first and the last
        that changed), beyond C-level passes (``_prefix``, ``_suffix``) over the snapshots.
        """
        (old_endpoints, old_weights), (new_endpoints, new_weights) = old, new
        # Pairs (endpoint, weight) agree where both endpoints and weights do: outside
        # [first, len - tail) of each snapshot (prefix and suffix may not overlap).
        first = min(_prefix(old_endpoints, new_endpoints), _prefix(old_weights, new_weights))
        tail = min(
            _suffix(old_endpoints, new_endpoints),
            _suffix(old_weights, new_weights),
            min(len(old_endpoints), len(new_endpoints)) - first,
        )
        stop_old, stop_new = len(old_endpoints) - tail, len(new_endpoints) - tail
        displaced: set[Callable[[Endpoint], object]] = set()
        with self._lock:
            if self.owner is not previous:
                return False
            self.owner = owner
            came = new_endpoints[first:stop_new]
            staying = set(came)
            touched: set[_Class] = set()
            for endpoint in old_endpoints[first:stop_old]:
                if endpoint not in staying:
                    touched.add(self._remove(endpoint))
                    if endpoint.listener is self.listener:
                        endpoint.listener = None
            for endpoint, weight in zip(came, new_weights[first:stop_new], strict=True):
                # Endpoints that left went first: a name indexed now is this endpoint's.
                entry = self._entries.get(endpoint.server)
                if entry is None:
                    previous_listener = self._add(endpoint, weight)
                    if previous_listener is not None:
                        displaced.add(previous_listener)
                    touched.add(self._entries[endpoint.server].cls)
                elif entry.cls.weight != weight:
                    touched.add(self._remove(endpoint))
                    self._add(endpoint, weight)
                    touched.add(self._entries[endpoint.server].cls)
            for cls in touched:
                if cls.buckets:
                    cls.least = min(cls.buckets)
                else:
                    del self._classes[cls.weight]
                    cls.key = None  # its heap entries are stale from now on
            self._rank()
        _retire(displaced, self)
        return True

    def retire(self) -> None:
        """Stop serving any picker: another index took over some of these endpoints."""
        with self._lock:
            self.owner = None

    # -- the parts (callers hold the lock) --------------------------------------------------

    def _add(self, endpoint: Endpoint, weight: float) -> Callable[[Endpoint], object] | None:
        """Index ``endpoint`` at its load in the class of ``weight``; its previous listener.

        The listener is set before the load is read: a change made after the read calls
        ``update``, which waits for this lock and then reads the load again.
        """
        previous = endpoint.listener
        endpoint.listener = self.listener
        cls = self._classes.get(weight)
        if cls is None:
            cls = self._classes[weight] = _Class(weight, next(self._orders))
        entry = _Entry(cls, endpoint)
        name = endpoint.server
        self._entries[name] = entry
        # Put in its bucket: swap-removed by _remove, or moved by update. The load is read
        # once: a lease may change it meanwhile (its update then waits for this lock).
        entry.load = load = endpoint.load
        bucket = cls.buckets.get(load)
        if bucket is None:
            cls.buckets[load] = [name]
        else:
            entry.slot = len(bucket)
            bucket.append(name)
        return None if previous is None or previous is self.listener else previous

    def _remove(self, endpoint: Endpoint) -> _Class:
        """Unindex ``endpoint``; its class, whose ``least`` the caller must settle."""
        name = endpoint.server
        entry = self._entries.pop(name)
        buckets = entry.cls.buckets
        bucket = buckets[entry.load]
        last = bucket.pop()
        if last is not name:
            bucket[entry.slot] = last
            self._entries[last].slot = entry.slot
        elif not bucket:
            del buckets[entry.load]
        return entry.cls

    def _rank(self) -> None:
        """Rank every class afresh, then settle ``best``: O(distinct weights), for builds."""
        heap = []
        for cls in self._classes.values():
            cls.key = key = (cls.least + 1) / cls.weight
            heap.append((key, cls.order, cls))
        heapify(heap)
        self._heap = heap
        self._settle()

    def _moved(self, cls: _Class) -> None:
        """``cls``'s least load changed: re-rank it. O(log distinct weights)."""
        cls.key = key = (cls.least + 1) / cls.weight
        heap = self._heap
        if len(heap) > 4 * len(self._classes) + 64:
            self._rank()  # stale entries pile up: start the heap afresh, amortised O(1)
            return
        heappush(heap, (key, cls.order, cls))
        if cls.best or key <= self._lowest:
            self._settle()
        # Otherwise a class outside ``best`` rose, or fell but stays above it: no change.

    def _settle(self) -> None:
        """Set ``best`` and ``single`` to the least buckets of the classes with the least key.

        Stale heap entries on top are dropped; the tied ones are taken off and put back.
        O(tied classes x log distinct weights).
        """
        heap = self._heap
        for cls in self._tied:
            cls.best = False
        while heap and heap[0][0] != heap[0][2].key:
            heappop(heap)
        if not heap:
            self._lowest, self.best, self.single, self._tied = math.inf, (), None, []
            return
        lowest = heap[0][0]
        tied: list[tuple[float, int, _Class]] = []
        while heap and heap[0][0] == lowest:
            entry = heappop(heap)
            cls = entry[2]
            if cls.key == lowest and not cls.best:  # current, and not a duplicate entry
                cls.best = True
                tied.append(entry)
        for entry in tied:
            heappush(heap, entry)
        self._lowest = lowest
        self._tied = [cls for _, _, cls in tied]
        best = [cls.buckets[cls.least] for cls in self._tied]
        self.best = tuple(best)
        self.single = best[0] if len(best) == 1 else None


def _retire(listeners: set[Callable[[Endpoint], object]], taker: LoadIndex) -> None:
    """Retire the indexes whose listeners ``taker`` displaced: their pickers then scan.

    Called without ``taker``'s lock held, so two indexes never wait for each other.
    """
    for listener in listeners:
        index = getattr(listener, "__self__", None)
        if isinstance(index, LoadIndex) and index is not taker:
            index.retire()
