"""What both runners share: cleaning a membership, applying it, and keeping the score."""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, final

from .._balancer import LoadBalancer
from .._stats import DiscoveryStatus
from .._validation import MAX_WEIGHT
from ._source import Membership, Source

__all__ = ["Applier", "Backoff", "MembershipChange"]

log = logging.getLogger("loadbalancer.discovery")


@final
@dataclass(frozen=True, slots=True)
class MembershipChange:
    """One membership applied to a balancer: who joined, who left, whose weight changed.

    ``at`` is the runner's clock reading; ``size`` the number of servers now.
    """

    source: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reweighted: tuple[str, ...]
    size: int
    at: float


def _usable(server: object, weight: object) -> str | None:
    """Why the entry cannot be applied, or None if it can."""
    if not isinstance(server, str) or not server or server != server.strip():
        return "the name must be a non-empty string without surrounding spaces"
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"the weight must be a number, not {type(weight).__name__}"
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        return f"the weight must be in (0, {MAX_WEIGHT:g}], got {weight!r}"
    return None


@final
class Backoff:
    """Seconds to wait before the ``n``-th retry in a row: ``base x 2 ** (n - 1)`` capped at
    ``cap``, jittered to between half and all of it (so that processes that lost the same
    registry at once do not all come back at once)."""

    __slots__ = ("_base", "_rng", "cap")

    def __init__(self, base: float, cap: float, rng: random.Random | None) -> None:
        self._base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def __call__(self, n: int) -> float:
        ceiling = min(self.cap, self._base * 2.0 ** min(n - 1, 64))
        return ceiling * (0.5 + 0.5 * self._rng.random())


@final
class Applier:
    """Applies each membership of ``source`` to ``lb`` and keeps the runner's score."""

    def __init__(
        self,
        lb: LoadBalancer,
        source: Source,
        on_change: Callable[[MembershipChange], object] | None,
        clock: Callable[[], float],
    ) -> None:
        self.lb = lb
        self.source = source
        try:
            self.name = source.name  # read once: the runner must not fail on a bad property
        except Exception:
            self.name = repr(type(source).__name__)
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: Mapping[str, Mapping[str, Any]] = {}
        self.updates = 0
        self.refused = 0
        self.failures = 0
        self.last_update: float | None = None
        self.last_error: str | None = None

    def apply(self, membership: Membership) -> bool:
        """Apply ``membership``; False if it was refused (too many servers)."""
        if not isinstance(membership, Membership):
            raise TypeError(
                f"{self.name}: watch() must yield Membership, not {type(membership).__name__}"
            )
        name = self.name
        weights: dict[str, float] = {}
        for server, weight in membership.weights.items():
            problem = _usable(server, weight)
            if problem is not None:
                log.warning(
                    "%s: skipped the entry %r (weight %r): %s", name, server, weight, problem
                )
                continue
            weights[server] = weight
        lb = self.lb
        if len(weights) > lb.max_servers:
            log.error(
                "%s: refused a membership of %d servers: the balancer holds at most "
                "max_servers=%d; keeping the last good one (%d servers)",
                name,
                len(weights),
                lb.max_servers,
                len(lb),
            )
            with self._lock:
                self.refused += 1
            return False
        before = lb.weights
        lb.replace(weights)
        now = self._clock()
        change = MembershipChange(
            source=name,
            added=tuple(s for s in weights if s not in before),
            removed=tuple(s for s in before if s not in weights),
            reweighted=tuple(s for s in weights if s in before and before[s] != weights[s]),
            size=len(weights),
            at=now,
        )
        with self._lock:
            self.updates += 1
            self.failures = 0  # the status says "healthy now"; the runner's backoff remembers
            self.last_update = now
            self._metadata = {s: m for s, m in membership.metadata.items() if s in weights}
        if change.added or change.removed or change.reweighted:
            log.info(
                "%s: membership of %d servers: added %s, removed %s, reweighted %s",
                name,
                change.size,
                list(change.added),
                list(change.removed),
                list(change.reweighted),
            )
            if self._on_change is not None:
                try:
                    self._on_change(change)
                except Exception:  # a broken callback must not stop discovery
                    log.exception("%s: on_change raised", name)
        return True

    def failed(self, error: BaseException, retry_in: float, failures: int) -> None:
        """Note a failed watch (``failures`` in a row): the last membership stays, and a
        retry comes in ``retry_in`` seconds."""
        try:
            text = f"{type(error).__name__}: {error}"
        except Exception:  # an exception whose str() fails must not stop discovery
            text = f"{type(error).__name__} (unprintable)"
        with self._lock:
            self.failures = failures
            self.last_error = text
        log.warning(
            "%s: %s (failure %d in a row); keeping the last membership (%d servers), "
            "retrying in %.2f s",
            self.name,
            text,
            failures,
            len(self.lb),
            retry_in,
        )

    def metadata(self, server: str) -> Mapping[str, Any]:
        """What the source said of ``server`` in the membership applied last ({} if nothing)."""
        with self._lock:
            return self._metadata.get(server, {})

    def status(self, running: bool) -> DiscoveryStatus:
        """The score now."""
        try:
            now: float | None = self._clock()
        except Exception:  # a status is how a broken clock gets diagnosed: give it, ageless
            now = None
        with self._lock:
            last = self.last_update
            return DiscoveryStatus(
                source=self.name,
                running=running,
                servers=len(self.lb),
                updates=self.updates,
                refused=self.refused,
                failures=self.failures,
                last_update_age=None if last is None or now is None else max(now - last, 0.0),
                last_error=self.last_error,
            )
