"""Rendezvous hashing (Thaler and Ravishankar, 1998): highest random weight wins."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Set
from heapq import heapify, heappop
from itertools import compress, repeat
from math import inf, log
from operator import mul, neg, or_, rshift, truediv
from typing import final

from ..._snapshot import Endpoint, Snapshot
from .._base import Key, Picker, Strategy
from ._bounded import Admission, BoundedPicker
from ._config import check_balance_factor, describe, resolve_rng
from ._keys import key_bytes, name_bytes, xxh64

__all__ = ["RendezvousStrategy"]

# (h >> 11 | 1) * 2**-53 maps a 64-bit hash to an odd multiple of 2**-53: exactly representable,
# strictly between 0 and 1, so its logarithm is finite and negative.
_UNIT = 2.0**-53


@final
class _RendezvousPicker(BoundedPicker):
    __slots__ = ("_negated", "_rng", "_seeds", "_servers")

    def __init__(
        self,
        servers: tuple[str, ...],
        weights: tuple[float, ...],
        rng: random.Random,
        admission: Admission | None,
    ) -> None:
        super().__init__(admission, servers)
        self._servers = servers
        # Each server's score for a key is XXH64 of the key seeded with the server's own hash:
        # one C call per server, and independent across servers.
        self._seeds = tuple(xxh64(name_bytes(server)) for server in servers)
        # None marks equal weights: the raw hash is then the score (no float rounding at all).
        self._negated = None if len(set(weights)) == 1 else tuple(-w for w in weights)
        self._rng = rng

    def _scores(self, key: bytes) -> list[float]:
        hashes = map(xxh64, repeat(key), self._seeds)
        negated = self._negated
        if negated is None:
            return list(hashes)
        # Weighted HRW, logarithmic method: score = -weight / ln(u) with u uniform in (0, 1)
        # gives server i the key with probability weight_i / sum(weights).
        units = map(mul, map(or_, map(rshift, hashes, repeat(11)), repeat(1)), repeat(_UNIT))
        return list(map(truediv, negated, map(log, units)))

    def pick(self, key: Key | None = None) -> str:
        """Return the server with the highest score for the key (O(n) in the pool size)."""
        if type(key) is str:
            try:
                scores = self._scores(key.encode())
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                scores = self._scores(self._key(key))
        elif type(key) is bytes:
            scores = self._scores(key)
        else:
            scores = self._scores(self._key(key))
        return self._servers[scores.index(max(scores))]

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the server with the highest score for the key among those not excluded.

        That is the key's next server by descending score past those it tried (the order
        bounded loads walk too), the same in every process. With every server excluded, the
        plain pick.
        """
        scores = self._scores(self._key(key))
        servers = self._servers
        best = servers[scores.index(max(scores))]
        if best not in exclude:
            return best
        for index in compress(range(len(servers)), map(exclude.__contains__, servers)):
            scores[index] = -inf
        top = max(scores)
        return best if top == -inf else servers[scores.index(top)]

    def _key(self, key: Key | None) -> bytes:
        if key is None:
            return self._rng.randbytes(8)
        return key_bytes(key)

    def _scores_for(self, key: Key | None) -> list[float]:
        """Every server's score for the key, encoded as ``pick`` encodes it."""
        if type(key) is str:
            try:
                return self._scores(key.encode())
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                pass
        elif type(key) is bytes:
            return self._scores(key)
        return self._scores(self._key(key))

    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        """Pick and count a request; with a balance factor, skip servers at capacity.

        Bounded, a first attempt scores the servers (O(n), as a pick) and orders the others
        only if the best is full (see ``_by_score``). A retry walks as
        ``BoundedPicker.acquire`` does.
        """
        admission = self._admission
        # Unbounded first attempts never get here: the balancer runs them (acquire_is_pick).
        if admission is None or exclude:
            return super().acquire(key, endpoints, exclude)
        scores = self._scores_for(key)
        best = self._servers[scores.index(max(scores))]
        return admission.admit_own(best, self._by_score, scores, endpoints)

    def candidates(self, key: Key | None) -> Iterator[str]:
        """All servers by descending score for the key, ties in name order."""
        return self._by_score(self._scores_for(key))

    def _by_score(self, scores: list[float]) -> Iterator[str]:
        """The servers by descending score, ties in name order: a stable sort's order, lazily.

        The best comes from one pass (O(n)). Only if more are wanted are the scores heaped
        (O(n), once) and popped one by one (O(log n) each), so a key that finds room at its
        first or second server never pays for a sort of all n.
        """
        servers = self._servers
        yield servers[scores.index(max(scores))]
        # (-score, index) pairs pop by descending score, then ascending index: the stable
        # sort's tie order. The first pop is the best, yielded above.
        heap = list(zip(map(neg, scores), range(len(scores)), strict=True))
        heapify(heap)
        heappop(heap)
        while heap:
            yield servers[heappop(heap)[1]]


@final
class RendezvousStrategy(Strategy):
    """Rendezvous (highest random weight) hashing: each server scores the key, the best wins.

    A server's score is XXH64 of the key seeded with the server's own hash; with unequal
    weights it becomes ``-weight / ln(u)``, ``u`` the hash mapped into (0, 1) (the logarithmic
    method), so a server's share is proportional to its weight. Scores depend only on the key
    and that server, so removing a server moves only its keys, and adding one moves keys only
    to it. A pick costs O(n): one hash per server (about 0.1 us each).

    ``key=None`` picks as if for a uniformly random key: 8 random bytes drawn from ``rng``.
    ``balance_factor`` (> 1, off by default) bounds loads on the lease path: a server holding
    ``ceil(balance_factor * (leases in flight + 1) * weight / total weight)`` or more
    admits no more, and the key goes to the server with the next highest score. ``get``
    ignores it. A retry (``pick_excluding``) goes to the highest-scoring server it has not
    tried, so a retried key lands in the same place every time.

    Per-server seeds are computed when the pool changes; a pick takes no lock. The strategy
    holds configuration only and may serve several balancers.
    """

    __slots__ = ("_balance_factor", "_rng")

    accepts_slow_start = False

    def __init__(
        self, *, balance_factor: float | None = None, rng: random.Random | None = None
    ) -> None:
        self._balance_factor = check_balance_factor(balance_factor)
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker scoring the snapshot's servers."""
        # Name order: ties (equal 64-bit hashes) then go to the same server in every process.
        pairs = sorted(zip(snapshot.servers, snapshot.weights, strict=True))
        servers = tuple(server for server, _ in pairs)
        weights = tuple(weight for _, weight in pairs)
        # The admission comes last: creating it takes the running total over to this
        # snapshot's servers, so nothing that can fail may follow it, and the picker still
        # published keeps its own total for as long as this build takes.
        admission = (
            None
            if self._balance_factor is None
            else Admission(self._balance_factor, snapshot, previous)
        )
        return _RendezvousPicker(servers, weights, self._rng, admission)

    def __repr__(self) -> str:
        return describe(
            "RendezvousStrategy",
            balance_factor=self._balance_factor,
        )
