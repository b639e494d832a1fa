"""Ring hash: consistent hashing on a ring of weight-scaled virtual nodes."""

from __future__ import annotations

import random
import sys
from abc import abstractmethod
from array import array
from bisect import bisect, bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from itertools import accumulate, chain, filterfalse, islice, repeat
from operator import add, le, mul, rshift, setitem, sub
from typing import Literal, final

from ..._snapshot import Endpoint, Snapshot
from ..._validation import check_positive_int
from .._base import Key, Picker, Strategy
from ._bounded import Admission, BoundedPicker
from ._config import check_balance_factor, describe, resolve_rng
from ._keys import key_bytes, md5, name_bytes, unpack_ketama, xxh64
from .ketama import KETAMA_VNODES, ketama_continuum, ketama_counts, server_points

__all__ = ["RingHashStrategy"]

RingHash = Literal["xxh64", "ketama"]

_DEFAULT_VNODES: dict[str, int] = {"xxh64": 160, "ketama": KETAMA_VNODES}

MAX_POINTS = 1 << 20
"""Most points a ring holds. An xxh64 ring beyond it has every server's count scaled down alike;
a ketama ring cannot be scaled and stay uhashring-compatible, so one beyond it is refused."""

_KETAMA_POINTS_PER_HASH = 4

# The bucket table (see _Tables) has 8 to 16 buckets per point, at least 2**16 of them (128 KiB,
# so small rings search rarely) and at most 2**23 (16 MiB of 2-byte slots, for rings above half
# a million points): so about 9 keys in 10 find their owner with one array index, at 16 to 32
# bytes per point. The chunk index has 8 to 16 points per chunk, so a key whose bucket holds a
# point bisects about a dozen points, not the whole ring.
_BUCKETS_PER_POINT = 8
_MIN_BUCKET_BITS = 16
_MAX_BUCKET_BITS = 23
_POINTS_PER_CHUNK = 16

_SEARCH = 0
"""The slot of a bucket holding a ring point: its keys need a search. ``names[0]`` is ``""``."""

# Slots of 2 bytes while there are few enough servers, else 4.
_SHORT_SLOTS = 1 << 16

# An edit that would move more than this share of the ring's points rebuilds it instead.
_MAX_EDITED_SHARE = 0.25


def _xxh64_counts(
    servers: tuple[str, ...], weights: tuple[float, ...], vnodes: int
) -> dict[str, int]:
    """Each server's number of points: ``vnodes * weight``, rounded, at least one, scaled down
    alike when the ring would exceed MAX_POINTS."""
    scale = min(1.0, MAX_POINTS / (vnodes * sum(weights)))
    return {
        server: max(1, round(vnodes * weight * scale))
        for server, weight in zip(servers, weights, strict=True)
    }


def _xxh64_points(server: str, start: int, stop: int) -> list[int]:
    """Points ``start`` to ``stop`` of ``server``: XXH64 of ``f"{server}_{k}"``."""
    prefix = name_bytes(f"{server}_")
    return [xxh64(prefix + str(index).encode()) for index in range(start, stop)]


def _ketama_points(server: str, start: int, stop: int) -> list[int]:
    """Points of hashes ``start`` to ``stop`` of ``server`` (four per hash): see ketama.py."""
    return server_points(server, start, stop)


PointsOf = Callable[[str, int, int], list[int]]


def _slot_code(slots: int) -> str:
    """The array typecode of a bucket table over ``slots`` slots."""
    return "H" if slots <= _SHORT_SLOTS else "I"


def _table_bits(points: int) -> int:
    """log2 of the bucket table's size for a ring of ``points`` points."""
    return min(max((_BUCKETS_PER_POINT * points).bit_length(), _MIN_BUCKET_BITS), _MAX_BUCKET_BITS)


def _chunk_bits(points: int) -> int:
    """log2 of the chunk index's size for a ring of ``points`` points."""
    return min((points // _POINTS_PER_CHUNK).bit_length(), _MAX_BUCKET_BITS)


@final
@dataclass(frozen=True, slots=True)
class _Tables:
    """A ring and its lookup tables, in arrays: never changed once a picker holds them.

    ``points`` are the sorted ring points (8 bytes each for xxh64, 4 for ketama) and
    ``owners[i]`` the slot of point ``i``'s owner (4 bytes), with one extra entry,
    ``owners[0]``, so that a hash past the last point wraps round with no test. ``names[s]``
    is the server of slot ``s``; slot 0 and slots freed by edits are ``""``. ``slots`` maps
    each server owning a point to its slot; an edit gives a joining server a freed slot or a
    new one, so the slots of the servers that stay, and the arrays holding them, stay valid.

    ``table[h >> shift]`` is the owner slot of every hash in that bucket when no point falls
    inside it, else 0 (``_SEARCH``). ``firsts[c]`` is the index of the first point at or after
    chunk ``c`` (``h >> chunk_shift``), ``firsts[-1]`` the point count, so a search only
    bisects ``points[firsts[c]:firsts[c + 1]]``. About 8 + 4 + 24 + 0.3 bytes per point
    (xxh64; ketama's points take 4), where lists of Python ints would take over 50.
    """

    points: array[int]
    owners: array[int]
    names: tuple[str, ...]
    slots: dict[str, int]
    table: array[int]
    shift: int
    firsts: array[int]
    chunk_shift: int


def _bucket_table(
    points: Sequence[int], owners: Sequence[int], bits: int, slots: int
) -> array[int]:
    """The bucket table over ``points``, built by C loops alone: see ``_Tables``.

    Point ``k``'s owner fills the buckets after point ``k - 1``'s through its own, which then
    gets ``_SEARCH``; the buckets after the last point wrap round to point 0's owner. The same
    entries as ``_fill`` writes (tested). O(points + buckets) time, the buckets by memcpy.
    """
    shift = bits - _table_bits(len(points))
    size = 1 << (bits - shift)
    buckets = list(map(rshift, points, repeat(shift)))
    gaps = map(sub, buckets, chain((-1,), buckets))
    # Each point's run of buckets as bytes, joined: a few C steps a point, not one a bucket.
    table = array(_slot_code(slots))
    cells = [slot.to_bytes(table.itemsize, sys.byteorder) for slot in range(slots)]
    table.frombytes(b"".join(map(mul, map(cells.__getitem__, owners), gaps)))
    table.frombytes(cells[owners[0]] * (size - len(table)))
    deque(map(setitem, repeat(table), buckets, repeat(_SEARCH)), maxlen=0)
    return table


def _chunk_index(points: Sequence[int], bits: int) -> array[int]:
    """``firsts`` over ``points`` (see ``_Tables``): a bisect per chunk, in C. O(chunks log
    points); lists bisect fastest, as their items are ints already."""
    shift = bits - _chunk_bits(len(points))
    starts = range(0, 1 << bits, 1 << shift)
    return array("I", [*map(bisect_left, repeat(points), starts), len(points)])


def _tables(points: list[int], owners: list[int], names: tuple[str, ...], bits: int) -> _Tables:
    """A ring's full tables from its points and owner slots (``owners`` not yet closed)."""
    owners.append(owners[0])
    return _Tables(
        array("Q" if bits == 64 else "I", points),
        array("I", owners),
        names,
        {name: slot for slot, name in enumerate(names) if name},
        _bucket_table(points, owners, bits, len(names)),
        bits - _table_bits(len(points)),
        _chunk_index(points, bits),
        bits - _chunk_bits(len(points)),
    )


def _fill(
    table: array[int], points: array[int], owners: array[int], shift: int, i: int, j: int
) -> None:
    """Rewrite the buckets from that of point ``i`` through that of point ``j``, inclusive.

    ``i`` may be -1 (from bucket 0) and ``j`` may be ``len(points)`` (to the table's end).
    Those buckets depend on points ``i`` to ``j`` alone, so after an edit this puts right
    every bucket between a changed point's neighbours. O(points and buckets in the range).
    """
    count = len(points)
    if i < 0:
        at = 0
    else:
        at = (points[i] >> shift) + 1
        table[at - 1] = _SEARCH
    for k in range(i + 1, min(j, count - 1) + 1):
        bucket = points[k] >> shift
        if bucket >= at:
            table[at:bucket] = array(table.typecode, repeat(owners[k], bucket - at))
            table[bucket] = _SEARCH
            at = bucket + 1
    if j >= count:
        table[at:] = array(table.typecode, repeat(owners[0], len(table) - at))


def _xxh64_tables(counts: dict[str, int]) -> _Tables:
    """The xxh64 ring of ``counts[s]`` points per server, and its tables.

    Point ``k`` of server ``s`` is XXH64 of ``f"{s}_{k}"``, as Envoy names them. A server's
    points depend on its own name and count only, so adding or removing a server never moves
    a key between two other servers. Equal points (a 64-bit collision) keep name order, so
    the smaller name owns the point. O(points log points) time.
    """
    # Name order, not registration order: the ring must not depend on how it was assembled.
    names = ("", *sorted(counts))
    suffixes = [str(index).encode() for index in range(max(counts.values()))]
    hashes: list[int] = []
    slots: list[int] = []
    for slot, server in enumerate(names[1:], 1):
        count = counts[server]
        hashes += map(xxh64, map(name_bytes(f"{server}_").__add__, suffixes[:count]))
        slots += repeat(slot, count)
    # Sorting by float (the top 53 bits) uses sort's fast comparison path, about twice as fast
    # as comparing 64-bit ints; the check catches the odd pair that agrees in those bits.
    floats = list(map(float, hashes))
    order = sorted(range(len(hashes)), key=floats.__getitem__)
    points = list(map(hashes.__getitem__, order))
    if not all(map(le, points, islice(points, 1, None))):
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        points = list(map(hashes.__getitem__, order))
    return _tables(points, list(map(slots.__getitem__, order)), names, 64)


def _ketama_tables(
    servers: tuple[str, ...], counts: list[int]
) -> tuple[_Tables, dict[int, list[str]]]:
    """libketama's continuum (see ``ketama_continuum``), its tables, and its collisions."""
    ring, claims = ketama_continuum(servers, counts)
    names = ("", *sorted(set(ring.values())))
    slots = {name: slot for slot, name in enumerate(names)}
    # Points are below 2**32, so float keys are exact and take sort's fast comparison path.
    points = sorted(ring, key=float)
    owners = list(map(slots.__getitem__, map(ring.__getitem__, points)))
    return _tables(points, owners, names, 32), claims


# Steps a retry's walk takes in Python before it builds C iterators (see pick_excluding).
_SHORT_WALK = 8


class _Ring(BoundedPicker):
    """Sorted ring points, the server owning each, and a bucket table over them."""

    __slots__ = (
        "_chunk_shift",
        "_claims",
        "_counts",
        "_firsts",
        "_names",
        "_owners",
        "_points",
        "_rng",
        "_shift",
        "_table",
        "_tables",
        "_tag",
    )

    def __init__(
        self,
        tables: _Tables,
        claims: dict[int, list[str]],
        counts: dict[str, int],
        tag: tuple[object, ...],
        rng: random.Random,
        admission: Admission | None,
        servers: tuple[str, ...],
    ) -> None:
        # A ketama ring may give a tiny-weight server no point (its weight rounds to no hash,
        # or every point it gives goes to a later server): no key maps to it, but a retry that
        # has tried every other server may still go there.
        placed = sorted(tables.slots)
        unplaced = sorted(set(servers).difference(placed)) if len(placed) < len(servers) else []
        super().__init__(admission, tuple(placed), tuple(unplaced))
        # Each table in a slot of its own: the hot path reads them with no indirection.
        self._tables = tables
        self._points = tables.points
        self._owners = tables.owners
        self._names = tables.names
        self._table = tables.table
        self._shift = tables.shift
        self._firsts = tables.firsts
        self._chunk_shift = tables.chunk_shift
        self._rng = rng
        # For the next build (see RingHashStrategy.build): each server's count of point groups,
        # a ketama ring's collisions (see ketama_continuum), and what else the ring depends
        # on; a build whose tag differs starts from scratch.
        self._counts = counts
        self._claims = claims
        self._tag = tag

    @abstractmethod
    def _hash(self, key: Key | None) -> int:
        """The ring position of ``key``: the slow path of ``pick``."""

    def _index(self, position: int) -> int:
        """The index of the first ring point after ``position`` (``len(points)``: past all).

        The same as ``bisect(points, position)``, over one chunk's few points only.
        """
        chunk = position >> self._chunk_shift
        firsts = self._firsts
        return bisect(self._points, position, firsts[chunk], firsts[chunk + 1])

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the owner of the first ring point clockwise from the key's hash not excluded.

        That is the key's next distinct server clockwise past those it tried (the order bounded
        loads walk too), the same in every process. With every server excluded, the plain pick.
        (A ketama server of tiny weight may own no point; such servers come after all others,
        in name order.)
        """
        start = self._index(self._hash(key))
        names = self._names
        server = names[self._owners[start]]
        if server not in exclude:
            return server
        # Usually fewer are excluded than the pool holds: then the length says they are not all.
        if len(exclude) >= len(self._reachable) and self.excludes_all(exclude):
            return self.unplaced_not_in(exclude) or server
        # A server not excluded owns some point: the walk ends within one turn of the ring.
        # The next point or two usually belong to another server: a few steps in Python first,
        # since building the C iterators of a long walk costs as much as a dozen of them.
        owners = self._owners
        size = len(self._points)
        at = start + 1
        for _ in range(_SHORT_WALK):
            if at >= size:
                at -= size  # start may be size itself: point 0
            server = names[owners[at]]
            if server not in exclude:
                return server
            at += 1
        return next(filterfalse(exclude.__contains__, self._clockwise(at)))

    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        """Pick and count a request; with a balance factor, skip servers at capacity.

        Bounded, a first attempt checks the key's own server and walks on clockwise only if
        it is full: O(1) expected for a fixed balance factor, whatever the ring's size. A retry
        walks as ``BoundedPicker.acquire`` does.
        """
        admission = self._admission
        if admission is None or exclude:
            return super().acquire(key, endpoints, exclude)
        position = self._hash(key)
        chunk = position >> self._chunk_shift  # _index, inlined: this is every bounded lease
        firsts = self._firsts
        start = bisect(self._points, position, firsts[chunk], firsts[chunk + 1])
        return admission.admit_own(self._names[self._owners[start]], self._walk, start, endpoints)

    def candidates(self, key: Key | None) -> Iterator[str]:
        """Distinct servers clockwise from the key's position, lazily: see ``_walk``."""
        return self._walk(self._index(self._hash(key)))

    def _walk(self, start: int) -> Iterator[str]:
        """Distinct servers clockwise from point ``start``, lazily.

        Each step indexes the ring (no copy of it), and the walk stops once every server has
        come: O(points walked) time, O(servers yielded) memory.
        """
        return self._distinct(self._clockwise(start))

    def _clockwise(self, start: int) -> Iterator[str]:
        """Owners of every point, from point ``start`` (``len(points)`` is point 0) on."""
        size = len(self._points)
        start %= size
        indices = chain(range(start, size), range(start))
        return map(self._names.__getitem__, map(self._owners.__getitem__, indices))

    def _distinct(self, owners: Iterator[str]) -> Iterator[str]:
        seen: set[str] = set()
        count = len(self._reachable)
        for server in owners:
            if server not in seen:
                seen.add(server)
                yield server
                if len(seen) == count:
                    return


@final
class _Xxh64Ring(_Ring):
    __slots__ = ()

    def pick(self, key: Key | None = None) -> str:
        """Return the owner of the first ring point after the key's XXH64 hash."""
        if type(key) is str:
            try:
                position = xxh64(key.encode())
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                position = self._hash(key)
        elif type(key) is bytes:
            position = xxh64(key)
        else:
            position = self._hash(key)
        names = self._names
        # Slot 0 (a bucket holding a point) is "": only then search, within the chunk.
        if owner := names[self._table[position >> self._shift]]:
            return owner
        chunk = position >> self._chunk_shift
        firsts = self._firsts
        return names[self._owners[bisect(self._points, position, firsts[chunk], firsts[chunk + 1])]]

    def _hash(self, key: Key | None) -> int:
        # The common types first, without key_bytes' frame: a bounded lease hashes here.
        if type(key) is str:
            try:
                return xxh64(key.encode())
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                pass
        elif type(key) is bytes:
            return xxh64(key)
        elif key is None:
            return self._rng.getrandbits(64)
        return xxh64(key_bytes(key))


@final
class _KetamaRing(_Ring):
    __slots__ = ()

    def pick(self, key: Key | None = None) -> str:
        """Return the owner of the first ring point after the key's ketama hash."""
        position: int
        if type(key) is str:
            try:
                position = unpack_ketama(md5(key.encode()).digest())[0]
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                position = self._hash(key)
        elif type(key) is bytes:
            position = unpack_ketama(md5(key).digest())[0]
        else:
            position = self._hash(key)
        names = self._names
        # Slot 0 (a bucket holding a point) is "": only then search, within the chunk.
        if owner := names[self._table[position >> self._shift]]:
            return owner
        chunk = position >> self._chunk_shift
        firsts = self._firsts
        return names[self._owners[bisect(self._points, position, firsts[chunk], firsts[chunk + 1])]]

    def _hash(self, key: Key | None) -> int:
        # The common types first, without key_bytes' frame: a bounded lease hashes here.
        if type(key) is str:
            try:
                return int(unpack_ketama(md5(key.encode()).digest())[0])
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                pass
        elif type(key) is bytes:
            return int(unpack_ketama(md5(key).digest())[0])
        elif key is None:
            return self._rng.getrandbits(32)
        return int(unpack_ketama(md5(key_bytes(key)).digest())[0])


def _edit(
    previous: _Ring,
    counts: dict[str, int],
    points_of: PointsOf,
    bits: int,
    order: tuple[str, ...] | None,
) -> tuple[_Tables, dict[int, list[str]]] | None:
    """The ring for ``counts``, edited from ``previous``'s: only changed servers' points move.

    A server's points depend on its name and count only, and the points for a count are a
    prefix of those for a larger one, so a server that joins, leaves or changes count has just
    the difference removed or merged in, and only the buckets between those points'
    neighbours are rewritten. Everything is written to copies: ``previous`` may be serving
    picks on other threads. The result is exactly the ring a full build gives (tested), or
    ``None`` when editing would not pay (a change moving over a quarter of the points):
    rebuild then. A bucket table or chunk index that must change size is rebuilt from the
    edited points, the rest of the edit kept.

    ``order`` is the pool's registration order for a ketama ring (``None`` for xxh64): a
    point several servers give goes to the latest of them, so every collided point is
    reassigned by it, and is dropped only when no server gives it any more. O(points moved x
    log points) Python steps, plus O(points + buckets) of C copying.
    """
    old = previous._counts
    tables = previous._tables
    changed = sorted(
        server
        for server in old.keys() | counts.keys()
        if old.get(server, 0) != counts.get(server, 0)
    )
    if not changed and not previous._claims:
        return tables, previous._claims  # shared: neither is ever changed once published
    per_count = 1 if order is None else _KETAMA_POINTS_PER_HASH
    moved = sum(abs(old.get(server, 0) - counts.get(server, 0)) for server in changed)
    if moved * per_count > _MAX_EDITED_SHARE * len(tables.points):
        return None
    points, owners, names = tables.points, tables.owners, list(tables.names)
    slots = dict(tables.slots)
    size = len(points)
    claims = {point: list(givers) for point, givers in previous._claims.items()}
    removed: set[int] = set()  # indices on the previous ring
    added: list[tuple[int, str]] = []
    touched: list[int] = []
    for server in changed:
        start, stop = counts.get(server, 0), old.get(server, 0)
        if start >= stop:
            continue
        hashes = points_of(server, start, stop)
        touched += hashes
        slot = slots.get(server, _SEARCH)
        for point in hashes if claims else set(hashes):
            if point in claims:  # ketama: another server may still give it
                claims[point].remove(server)
                continue
            at = bisect_left(points, point)
            while at < size and points[at] == point:
                if owners[at] == slot:
                    removed.add(at)
                at += 1
    pending: dict[int, str] = {}  # a ketama ring's new points and their owners
    for server in changed:
        start, stop = old.get(server, 0), counts.get(server, 0)
        if start >= stop:
            continue
        hashes = points_of(server, start, stop)
        touched += hashes
        if order is None:
            added += zip(hashes, repeat(server))
            continue
        for point in hashes:
            if point in claims:
                claims[point].append(server)
            elif point in pending:
                claims[point] = [pending[point], server]
            else:
                at = bisect_left(points, point)
                if at < size and points[at] == point and at not in removed:
                    claims[point] = [names[owners[at]], server]
                else:
                    pending[point] = server
    reowned: dict[int, str] = {}
    losers: set[str] = set()
    if order is not None and claims:
        rank = {server: index for index, server in enumerate(order)}
        for point, givers in list(claims.items()):
            touched.append(point)
            if len(givers) < 2:
                del claims[point]
            if point in pending:
                pending[point] = max(givers, key=rank.__getitem__)
                continue
            at = bisect_left(points, point)
            losers.add(names[owners[at]])
            if givers:
                reowned[point] = max(givers, key=rank.__getitem__)
            else:
                removed.add(at)
        added = sorted(pending.items())
    elif order is not None:
        added = sorted(pending.items())
    else:
        added.sort()

    def slot_of(server: str) -> int:
        if (slot := slots.get(server)) is None:
            slot = names.index("", 1) if "" in islice(names, 1, None) else len(names)
            if slot == len(names):
                names.append(server)
            names[slot] = server
            slots[server] = slot
        return slot

    kept_points, kept_owners = points, owners[:size]
    if removed:
        kept_points, kept_owners = array(points.typecode), array("I")
        previous_end = 0
        for index in sorted(removed):
            kept_points += points[previous_end:index]
            kept_owners += owners[previous_end:index]
            previous_end = index + 1
        kept_points += points[previous_end:size]
        kept_owners += owners[previous_end:size]
    new_points, new_owners = kept_points, kept_owners
    if added:
        new_points, new_owners = array(points.typecode), array("I")
        previous_end, kept = 0, len(kept_points)
        for point, server in added:
            at = bisect_left(kept_points, point)
            # Equal xxh64 points keep name order; a ketama ring never has two equal points.
            while at < kept and kept_points[at] == point and names[kept_owners[at]] < server:
                at += 1
            new_points += kept_points[previous_end:at]
            new_owners += kept_owners[previous_end:at]
            new_points.append(point)
            new_owners.append(slot_of(server))
            previous_end = at
        new_points += kept_points[previous_end:kept]
        new_owners += kept_owners[previous_end:kept]
    if not new_points:
        return None
    for point, server in reowned.items():
        new_owners[bisect_left(new_points, point)] = slot_of(server)
    new_owners.append(new_owners[0])
    # Free the slots of servers left owning no point, for the next to join. Only a server in
    # some collision can lose every point while it has a count: the others are settled at once.
    contested = set(chain.from_iterable(claims.values()))
    for server in chain(changed, losers):
        if server in slots and not _owns_a_point(
            server, counts, claims, order, points_of, contested
        ):
            names[slots.pop(server)] = ""
    code = _slot_code(len(names))
    count = len(new_points)
    shift = tables.shift
    if bits - _table_bits(count) != shift or code != tables.table.typecode:
        table = _bucket_table(new_points, new_owners, bits, len(names))
        shift = bits - _table_bits(count)
    else:
        table = tables.table[:]
        for point in touched:
            at = bisect_left(new_points, point)
            _fill(table, new_points, new_owners, shift, at - 1, at)
        # The first point owns the hashes before it and past the last one: it may have changed.
        _fill(table, new_points, new_owners, shift, -1, 0)
        _fill(table, new_points, new_owners, shift, count - 1, count)
    chunk_shift = tables.chunk_shift
    if bits - _chunk_bits(count) != chunk_shift:
        firsts = _chunk_index(new_points, bits)
        chunk_shift = bits - _chunk_bits(count)
    else:
        # firsts[c] counts the points in chunks below c: shift it by the points moved there.
        steps = [0] * len(tables.firsts)
        for index in removed:
            steps[(points[index] >> chunk_shift) + 1] -= 1
        for point, _ in added:
            steps[(point >> chunk_shift) + 1] += 1
        firsts = array("I", map(add, tables.firsts, accumulate(steps)))
    edited = _Tables(new_points, new_owners, tuple(names), slots, table, shift, firsts, chunk_shift)
    return edited, claims


def _owns_a_point(
    server: str,
    counts: dict[str, int],
    claims: dict[int, list[str]],
    order: tuple[str, ...] | None,
    points_of: PointsOf,
    contested: set[str],
) -> bool:
    """Whether ``server`` owns a point of the edited ring: any with a count, bar ketama's
    rare server whose every point is given by a later one too (one of ``contested``, the
    servers in some collision)."""
    count = counts.get(server, 0)
    if not count or order is None or server not in contested:
        return count > 0
    rank = {name: index for index, name in enumerate(order)}
    return any(
        point not in claims or max(claims[point], key=rank.__getitem__) == server
        for point in points_of(server, 0, count)
    )


@final
class RingHashStrategy(Strategy):
    """Consistent hashing on a ring of virtual nodes: a key goes to the next point clockwise.

    ``hash="xxh64"`` (default): server ``s`` gets ``round(vnodes * weight)`` points (``vnodes``
    defaults to 160; weights count relative to 1, and a server gets at least one point), at
    XXH64 of ``f"{s}_{k}"``; keys hash with XXH64, seed 0. Points depend only on each server's
    own name and weight, so removing a server moves only its keys, and adding one moves keys
    only to it. Rings above 2**20 points are scaled down as a whole.

    ``hash="ketama"``: maps every key exactly as ``uhashring.HashRing(nodes, hash_fn="ketama")``
    does (tested) for the same servers, weights and ``vnodes`` (default 40 hashes of four MD5
    points each, scaled by weight over the mean weight), which is libketama's continuum as used
    by memcached clients. Points collide rarely; the later-registered server then owns the
    point, as in uhashring. ``str`` keys are UTF-8 encoded as uhashring does; ``bytes`` keys
    are hashed as they are (uhashring would hash their ``str()``). As in libketama, a weight
    change renormalises every server, so it moves some keys between other servers too. A ketama
    ring cannot be scaled down and stay compatible, so ``vnodes`` above 2**18 is refused, and
    so is a pool whose ring would exceed 2**20 points (four per hash: about 6,500 servers at
    the default ``vnodes``).

    A ``str`` key holding a lone surrogate is encoded with ``"surrogatepass"``, as server names
    are (uhashring would raise ``UnicodeEncodeError``).

    ``key=None`` picks as if for a uniformly random key: a hash drawn from ``rng``.
    ``balance_factor`` (> 1, off by default) bounds loads on the lease path: a server holding
    ``ceil(balance_factor * (leases in flight + 1) * weight / total weight)`` or more
    admits no more, and the key goes to the next distinct server clockwise. ``get`` ignores
    it. A retry (``pick_excluding``) goes to the next distinct server clockwise that it has
    not tried, so a retried key lands in the same place every time. Both walk the ring by
    index, lazily, without copying it.

    A pick is one hash and, for about 9 keys in 10, one array index into a bucket table; the
    others bisect the few points of one chunk. No lock. The ring lives in arrays of ints and
    owner slots: about 40 bytes a point (6 MiB at 1,000 servers of 160 points), where lists
    of Python ints and names took over 50. A build from the previous picker, when servers
    join, leave or change weight, edits a copy of that picker's ring: it removes and merges
    in only their points and rewrites only the buckets around them, giving exactly the ring
    a full build gives, in O(points moved x log points) steps plus a copy of the arrays (and
    a new bucket table or chunk index when the point count crosses a size). A change moving
    more than a quarter of the points is built in full, in O(points log points). The previous
    picker is only read, so it keeps serving picks meanwhile. The strategy
    holds configuration only and may serve several balancers.
    """

    __slots__ = ("_balance_factor", "_hash", "_rng", "_vnodes")

    accepts_slow_start = False

    def __init__(
        self,
        *,
        hash: RingHash = "xxh64",
        vnodes: int | None = None,
        balance_factor: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(hash, str):
            raise TypeError(f"hash must be 'xxh64' or 'ketama', not {type(hash).__name__}")
        if hash not in _DEFAULT_VNODES:
            raise ValueError(f"hash must be 'xxh64' or 'ketama', got {hash!r}")
        self._hash: RingHash = hash
        self._vnodes = (
            _DEFAULT_VNODES[hash] if vnodes is None else check_positive_int(vnodes, "vnodes")
        )
        # A one-server pool hashes exactly vnodes times, the fewest of any pool: a vnodes whose
        # ring overflows even then could never build.
        if hash == "ketama" and self._vnodes * _KETAMA_POINTS_PER_HASH > MAX_POINTS:
            raise ValueError(
                f"vnodes must be at most {MAX_POINTS // _KETAMA_POINTS_PER_HASH} for "
                f"hash='ketama' (a ring of at most {MAX_POINTS} points, four per hash), "
                f"got {vnodes}"
            )
        self._balance_factor = check_balance_factor(balance_factor)
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker over the ring of the snapshot's servers, edited from ``previous``'s
        when only a few servers' points change."""
        servers = snapshot.servers
        tag = (self._hash, self._vnodes)
        if self._hash == "ketama":
            hash_counts = ketama_counts(snapshot.weights, self._vnodes)
            hashes = sum(hash_counts)
            if hashes * _KETAMA_POINTS_PER_HASH > MAX_POINTS:
                raise ValueError(
                    f"vnodes={self._vnodes} gives {len(servers)} servers a ketama ring "
                    f"of {hashes * _KETAMA_POINTS_PER_HASH} points, above the limit of "
                    f"{MAX_POINTS}; a ketama ring cannot be scaled down and stay compatible, "
                    "so lower vnodes or use hash='xxh64'"
                )
            counts = dict(zip(servers, hash_counts, strict=True))
            edited = None
            if isinstance(previous, _KetamaRing) and previous._tag == tag:
                edited = _edit(previous, counts, _ketama_points, 32, servers)
            tables, claims = edited or _ketama_tables(servers, hash_counts)
            admission = self._admission(snapshot, previous)
            return _KetamaRing(tables, claims, counts, tag, self._rng, admission, servers)
        counts = _xxh64_counts(servers, snapshot.weights, self._vnodes)
        edited = None
        if isinstance(previous, _Xxh64Ring) and previous._tag == tag:
            edited = _edit(previous, counts, _xxh64_points, 64, None)
        tables, claims = edited or (_xxh64_tables(counts), {})
        admission = self._admission(snapshot, previous)
        return _Xxh64Ring(tables, claims, counts, tag, self._rng, admission, servers)

    def _admission(self, snapshot: Snapshot, previous: Picker | None) -> Admission | None:
        """The bounded-loads admission of a new picker, created once its ring is built.

        Creating it takes the running total over to this snapshot's servers, so nothing that
        can fail may follow it, and the picker still published keeps its own total for as
        long as the ring takes to build.
        """
        if self._balance_factor is None:
            return None
        return Admission(self._balance_factor, snapshot, previous)

    def __repr__(self) -> str:
        return describe(
            "RingHashStrategy",
            hash=None if self._hash == "xxh64" else self._hash,
            vnodes=None if self._vnodes == _DEFAULT_VNODES[self._hash] else self._vnodes,
            balance_factor=self._balance_factor,
        )
