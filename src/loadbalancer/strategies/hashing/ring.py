"""Ring hash: consistent hashing on a ring of weight-scaled virtual nodes."""

from __future__ import annotations

import random
from abc import abstractmethod
from bisect import bisect
from collections.abc import Iterator, Set
from itertools import chain, islice, repeat
from operator import le
from typing import Literal, final

from ..._snapshot import Snapshot
from ..._validation import check_positive_int
from .._base import Key, Picker, Strategy
from .._exclude import first_not_in
from ._bounded import Admission, BoundedPicker
from ._config import check_balance_factor, describe, resolve_rng
from ._keys import key_bytes, md5, name_bytes, unpack_ketama, xxh64
from .ketama import KETAMA_VNODES, ketama_counts, ketama_ring

__all__ = ["RingHashStrategy"]

RingHash = Literal["xxh64", "ketama"]

_DEFAULT_VNODES: dict[str, int] = {"xxh64": 160, "ketama": KETAMA_VNODES}

MAX_POINTS = 1 << 20
"""Most points a ring holds. An xxh64 ring beyond it has every server's count scaled down alike;
a ketama ring cannot be scaled and stay uhashring-compatible, so one beyond it is refused."""

_KETAMA_POINTS_PER_HASH = 4


def _xxh64_ring(
    servers: tuple[str, ...], weights: tuple[float, ...], vnodes: int
) -> tuple[list[int], list[str]]:
    """Return sorted 64-bit ring points and their owners: ``vnodes * weight`` per server.

    Point ``k`` of server ``s`` is XXH64 of ``f"{s}_{k}"``, as Envoy names them. A server's
    points depend on its own name and weight only, so adding or removing a server never moves
    a key between two other servers.
    """
    scale = min(1.0, MAX_POINTS / (vnodes * sum(weights)))
    # Name order, not registration order: the ring must not depend on how it was assembled.
    pairs = sorted(zip(servers, weights, strict=True))
    counts = [max(1, round(vnodes * weight * scale)) for _, weight in pairs]
    suffixes = [str(index).encode() for index in range(max(counts))]
    hashes: list[int] = []
    owners: list[str] = []
    for (server, _), count in zip(pairs, counts, strict=True):
        hashes += map(xxh64, map(name_bytes(f"{server}_").__add__, suffixes[:count]))
        owners += [server] * count
    # Sorting by float (the top 53 bits) uses sort's fast comparison path, about twice as fast
    # as comparing 64-bit ints; the check catches the odd pair that agrees in those bits.
    floats = list(map(float, hashes))
    order = sorted(range(len(hashes)), key=floats.__getitem__)
    points = list(map(hashes.__getitem__, order))
    if not all(map(le, points, islice(points, 1, None))):
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        points = list(map(hashes.__getitem__, order))
    # Equal points (a 64-bit collision) keep name order, so the smaller name owns the point.
    return points, list(map(owners.__getitem__, order))


# The bucket table (see _buckets) gets about 8 buckets per point, at most 2**18 buckets (a 2 MiB
# list), and is skipped for rings above 2**17 points, where building it would cost more than
# it saves.
_BUCKETS_PER_POINT = 8
_MAX_BUCKET_BITS = 18
_MAX_BUCKETED_POINTS = 1 << 17


def _buckets(points: list[int], owners: list[str], bits: int) -> tuple[list[str | None], int]:
    """A direct-lookup table over the top bits of a hash, and the shift that indexes it.

    Entry ``h >> shift`` is the owner of every hash in that bucket when no ring point falls
    inside it (most buckets), else ``None``, which sends the pick to a binary search. A binary
    search over thousands of points costs a dozen pointer-chasing comparisons; this is one
    list index for about 9 keys in 10.
    """
    if len(points) > _MAX_BUCKETED_POINTS:
        return [None], bits
    size_bits = min((_BUCKETS_PER_POINT * len(points)).bit_length(), _MAX_BUCKET_BITS)
    shift = bits - size_bits
    table: list[str | None] = [None] * (1 << size_bits)
    previous = -1
    for point, owner in zip(points, owners, strict=True):
        bucket = point >> shift
        if bucket > previous + 1:  # buckets with no point: all their hashes go to this one
            table[previous + 1 : bucket] = repeat(owner, bucket - previous - 1)
        previous = bucket
    table[previous + 1 :] = repeat(owners[0], len(table) - previous - 1)  # wraps to the first
    return table, shift


class _Ring(BoundedPicker):
    """Sorted ring points, the server owning each, and a bucket table over them."""

    __slots__ = ("_buckets", "_owners", "_points", "_rng", "_shift")

    def __init__(
        self,
        points: list[int],
        owners: list[str],
        bits: int,
        rng: random.Random,
        admission: Admission | None,
        servers: tuple[str, ...],
    ) -> None:
        # A ketama ring may give a tiny-weight server no point: no key maps to it, but a retry
        # that has tried every other server may still go there.
        placed = tuple(dict.fromkeys(owners))
        unplaced = sorted(set(servers).difference(placed)) if len(placed) < len(servers) else []
        super().__init__(admission, placed, tuple(unplaced))
        self._points = points
        # One extra owner closes the ring: a hash past the last point belongs to the first, so
        # the owner of bisect()'s result needs no wrap-around test on the hot path.
        self._owners = (*owners, owners[0])
        self._buckets, self._shift = _buckets(points, owners, bits)
        self._rng = rng

    @abstractmethod
    def _hash(self, key: Key | None) -> int:
        """The ring position of ``key``: the slow path of ``pick``."""

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the owner of the first ring point clockwise from the key's hash not excluded.

        That is the key's next distinct server clockwise past those it tried (the order bounded
        loads walk too), the same in every process. With every server excluded, the plain pick.
        (A ketama server of tiny weight may own no point; such servers come after all others,
        in name order.)
        """
        start = bisect(self._points, self._hash(key))
        owners = self._owners
        server = owners[start]
        if server not in exclude:
            return server
        # Usually fewer are excluded than the pool holds: then the length says they are not all.
        if len(exclude) >= len(self._reachable) and self.excludes_all(exclude):
            return self.unplaced_not_in(exclude) or server
        # A server not excluded owns some point: the walk ends within one turn of the ring.
        return first_not_in(owners, len(self._points), start + 1, exclude)

    def candidates(self, key: Key | None) -> Iterator[str]:
        """Distinct servers clockwise from the key's position."""
        return self._distinct(self._clockwise(bisect(self._points, self._hash(key))))

    def _clockwise(self, start: int) -> Iterator[str]:
        """Owners of every point, from point ``start`` (``len(points)`` is point 0) on."""
        # Indexing, not islice, so starting far round a ring of a million points costs nothing.
        size = len(self._points)
        start %= size
        return map(self._owners.__getitem__, chain(range(start, size), range(start)))

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
        # Server names are non-empty, so a bucket hit is truthy; None means search the ring.
        return (
            self._buckets[position >> self._shift] or self._owners[bisect(self._points, position)]
        )

    def _hash(self, key: Key | None) -> int:
        if key is None:
            return self._rng.getrandbits(64)
        return xxh64(key_bytes(key))


@final
class _KetamaRing(_Ring):
    __slots__ = ()

    def pick(self, key: Key | None = None) -> str:
        """Return the owner of the first ring point after the key's ketama hash."""
        if type(key) is str:
            try:
                position = unpack_ketama(md5(key.encode()).digest())[0]
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                position = self._hash(key)
        elif type(key) is bytes:
            position = unpack_ketama(md5(key).digest())[0]
        else:
            position = self._hash(key)
        return (
            self._buckets[position >> self._shift] or self._owners[bisect(self._points, position)]
        )

    def _hash(self, key: Key | None) -> int:
        if key is None:
            return self._rng.getrandbits(32)
        return int(unpack_ketama(md5(key_bytes(key)).digest())[0])


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
    not tried, so a retried key lands in the same place every time.

    The ring is built when the pool changes; a pick is one hash and, for about 9 keys in 10,
    one list index (else a binary search), with no lock. The strategy holds configuration only
    and may serve several balancers.
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
        """Return a picker over the ring of the snapshot's servers."""
        admission = (
            None
            if self._balance_factor is None
            else Admission(self._balance_factor, snapshot, previous)
        )
        if self._hash == "ketama":
            hashes = sum(ketama_counts(snapshot.weights, self._vnodes))
            if hashes * _KETAMA_POINTS_PER_HASH > MAX_POINTS:
                raise ValueError(
                    f"vnodes={self._vnodes} gives {len(snapshot.servers)} servers a ketama ring "
                    f"of {hashes * _KETAMA_POINTS_PER_HASH} points, above the limit of "
                    f"{MAX_POINTS}; a ketama ring cannot be scaled down and stay compatible, "
                    "so lower vnodes or use hash='xxh64'"
                )
            points, owners = ketama_ring(snapshot.servers, snapshot.weights, self._vnodes)
            return _KetamaRing(points, owners, 32, self._rng, admission, snapshot.servers)
        points, owners = _xxh64_ring(snapshot.servers, snapshot.weights, self._vnodes)
        return _Xxh64Ring(points, owners, 64, self._rng, admission, snapshot.servers)

    def __repr__(self) -> str:
        return describe(
            "RingHashStrategy",
            hash=None if self._hash == "xxh64" else self._hash,
            vnodes=None if self._vnodes == _DEFAULT_VNODES[self._hash] else self._vnodes,
            balance_factor=self._balance_factor,
        )
